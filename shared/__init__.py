"""Data layer shared by every function: settings, pool, SQL services, auth and errors."""
