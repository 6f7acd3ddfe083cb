"""The booking function as its own ASGI app."""

from functions.booking.routes import router
from shared.web.app import create_app

app = create_app(title="Ticketing: booking", routers=[router])
