"""The Lambda path's baseline: hello-world FastAPI + Mangum, one async POST route with a pydantic body.

Nothing of the project is imported (no logging setup, no ``gc.freeze``): this is what the
framework and the adapter cost per invocation, the floor the booking handler is compared
with in bench/lambda_path.py. A module of its own, without postponed annotations, so
FastAPI resolves the body model.
"""

from typing import Any

from fastapi import FastAPI
from mangum import Mangum
from pydantic import BaseModel


class Booking(BaseModel):
    event_id: int
    quantity: int = 1


app = FastAPI()


@app.post("/bookings", status_code=201)
async def book(body: Booking) -> dict[str, Any]:
    return {"event_id": body.event_id, "quantity": body.quantity}


handler = Mangum(app, lifespan="off")
