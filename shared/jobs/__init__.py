"""Scheduled work that spans domains (relay and tidy), run by the relay function and the worker's beat."""
