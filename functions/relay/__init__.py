"""The scheduled relay function: publish outbox rows the request path could not, and tidy."""
