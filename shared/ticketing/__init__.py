"""Ticketing: events, the ticket inventory and the ways tickets are granted (bookings, holds).

Each module keeps its SQL next to the function that runs it. Never imports the web layer.
"""
