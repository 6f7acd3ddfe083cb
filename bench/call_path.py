"""Which project files one warm booking runs through, and how often control crosses files.

    DATABASE_URL=... REDIS_URL=... python -m bench.call_path

Books through the booking function's Mangum handler with an API Gateway v2 event (the
Lambda path, rate limiting off), once to warm up and once under a profiler that records
every Python call whose code lives in this project. Prints the files in first-touch order,
the number of calls from one project file into another (coroutine resumptions count, so
ASGI layers weigh in) and the distinct file-to-file edges. DATABASE_URL should name a
scratch database: it is migrated and gets two users and an event.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple 42"


def _project(filename: str) -> bool:
    return filename.startswith(str(ROOT)) and "/.venv/" not in filename and "/bench/" not in filename


def main() -> int:
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        print("set DATABASE_URL (a scratch database) and REDIS_URL", file=sys.stderr)
        return 2
    os.environ.setdefault("APP_ENV", "development")
    os.environ.setdefault("JWT_SECRET", secrets.token_urlsafe(48))
    os.environ["RATE_LIMIT_ENABLED"] = "false"

    from functions.booking.handler import handler as booking
    from functions.events.handler import handler as events
    from functions.users.handler import handler as users
    from local.lambda_events import build_lambda_event
    from shared.platform import migrate

    migrate.main([])

    def lambda_event(method: str, path: str, body: Any = None, token: str = "", form: str = "") -> dict[str, Any]:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        headers["content-type"] = "application/x-www-form-urlencoded" if form else "application/json"
        return build_lambda_event(method, path, headers=headers, body=form or json.dumps(body))

    def run(handler: Any, request: dict[str, Any], status: int) -> Any:
        response = handler(request, None)
        assert response["statusCode"] == status, response
        return json.loads(response["body"])

    def account(role: str) -> tuple[dict[str, Any], str]:
        email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
        user = run(users, lambda_event("POST", "/users", {"email": email, "password": PASSWORD, "role": role}), 201)
        form = f"username={email}&password={PASSWORD.replace(' ', '+')}"
        return user, run(users, lambda_event("POST", "/auth/token", form=form), 200)["access_token"]

    _, organizer = account("organizer")
    customer, token = account("customer")
    event = run(events, lambda_event("POST", "/events", {"title": "Call path", "total_tickets": 10}, organizer), 201)
    book = ("POST", f"/book/{customer['id']}", {"event_id": event["id"]}, token)
    run(booking, lambda_event(*book), 201)  # warm: imports, the pool, caches
    traced = lambda_event(*book)

    calls: list[tuple[str, str, str]] = []

    def profile(frame: FrameType, what: str, arg: Any) -> None:
        if what != "call" or not _project(frame.f_code.co_filename):
            return
        caller = frame.f_back
        while caller is not None and not _project(caller.f_code.co_filename):
            caller = caller.f_back
        if caller is not None:
            calls.append((caller.f_code.co_filename, frame.f_code.co_filename, frame.f_code.co_name))

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        run(booking, traced, 201)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)

    def rel(path: str) -> str:
        return str(Path(path).relative_to(ROOT))

    files = list(dict.fromkeys(rel(callee) for _, callee, _ in calls))
    crossings = Counter((rel(a), rel(b), name) for a, b, name in calls if a != b)
    edges = {(a, b) for a, b, _ in crossings}
    print(f"files: {len(files)}  file-to-file calls: {sum(crossings.values())}  "
          f"distinct file-to-file edges: {len(edges)}")
    for path in files:
        print(f"  {path}")
    for (a, b, name), n in crossings.most_common():
        print(f"  {n:3d}  {a} -> {b}:{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
