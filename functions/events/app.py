"""The events function as its own ASGI app."""

from functions.events.routes import router
from shared.web.app import create_app

app = create_app(title="Ticketing: events", routers=[router])
