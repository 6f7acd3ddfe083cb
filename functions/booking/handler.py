"""Lambda entry point of the booking function.

Lifespan is off: with it on, Mangum would run startup and shutdown around every
invocation. The connection pool opens lazily on first use and stays warm instead.
"""

from mangum import Mangum

from functions.booking.app import app

handler = Mangum(app, lifespan="off")
