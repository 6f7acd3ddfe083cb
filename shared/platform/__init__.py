"""Platform: settings, clock, errors, the database pool, migrations, logging, metrics, cloud config.

Knows nothing about tickets or HTTP; every other layer may import it.
"""
