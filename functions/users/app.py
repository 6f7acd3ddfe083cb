"""The users function as its own ASGI app."""

from functions.users.routes import router
from shared.web.app import create_app

app = create_app(title="Ticketing: users", routers=[router])
