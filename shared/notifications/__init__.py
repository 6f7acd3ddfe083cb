"""Notifications: the outbox written in the domain's transactions, its relay to Celery, dead letters."""
