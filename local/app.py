"""Every function's routes behind one ASGI app, for uvicorn in the dev loop and containers.

The routers are the functions' own: each route is defined once, in its function.
"""

from functions.booking.routes import router as booking_router
from functions.events.routes import router as events_router
from functions.users.routes import router as users_router
from shared.web.app import create_app
from shared.web.health import router as health_router
from shared.web.metrics_route import router as metrics_router

app = create_app(
    title="Ticketing backend (all functions)",
    description="Users, events and booking functions served together by the local router.",
    # Probes and scrapes first: the router tries routes in order, and a probe that came last
    # walked every function's routes before matching (measured: 98 -> 65 us per probe, in
    # process). No path is shared between these routers, so the order changes no answer.
    routers=[health_router, metrics_router, users_router, events_router, booking_router],
)
