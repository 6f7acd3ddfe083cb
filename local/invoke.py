"""Invoke a function's Lambda handler with an API Gateway event, like ``sam local invoke``.

    python -m local.invoke GET /events/1
    python -m local.invoke POST /users --json '{"email": "a@b.co", "password": "123"}'
    python -m local.invoke POST /auth/token --form username=a@b.co --form password=123
    python -m local.invoke GET '/events?limit=5' -H 'authorization: Bearer TOKEN' --v1
    python -m local.invoke --event tests/lambda_events/apigw_v2.json --function events

The handler runs in this process against DATABASE_URL / REDIS_URL (or ``.env``; or, when
neither sets them, the services of a running ``dev.py up`` stack), exactly as the Lambda
runtime would call it. The Lambda response (statusCode, headers, body, ...)
is printed as JSON on stdout; handler logs go to stderr. ``--body`` prints only the decoded
body. The exit status is 0 when the handler answered, whatever its HTTP status, and 2 for
bad arguments (no function owns the path, unreadable event file).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

from local.lambda_events import HTTP_FUNCTIONS, build_event, function_for, invoke
from shared.platform.settings import get_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.invoke",
        description="Invoke a function's Lambda handler with an API Gateway event.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("method", nargs="?", help="HTTP method, e.g. GET")
    parser.add_argument("path", nargs="?", help="request path, may include ?query")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("-d", "--data", help="raw request body; @FILE reads it from a file")
    body.add_argument("--json", dest="json_body", help="JSON request body (sets content-type)")
    body.add_argument("--form", action="append", metavar="NAME=VALUE",
                      help="form field (repeatable; sets content-type)")
    parser.add_argument("--cookie", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--token", help="bearer token (adds an authorization header)")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--v2", dest="fmt", action="store_const", const="v2",
                     help="HTTP API payload 2.0 (default)")
    fmt.add_argument("--v1", dest="fmt", action="store_const", const="v1",
                     help="REST API (payload 1.0)")
    parser.add_argument("-e", "--event", help="read the whole event from a JSON file ('-' = stdin)")
    parser.add_argument("-f", "--function", choices=HTTP_FUNCTIONS,
                        help="function to invoke (default: the one that owns the route)")
    parser.add_argument("--body", dest="body_only", action="store_true",
                        help="print only the decoded response body")
    parser.set_defaults(fmt="v2")
    return parser


def _headers(values: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"header must look like 'Name: value', got {item!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


def _read_event(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    event = json.loads(text)
    if not isinstance(event, dict):
        raise ValueError("the event file must hold a JSON object")
    return event


def _event_route(event: dict[str, Any]) -> tuple[str, str]:
    """Method and path of an API Gateway v1 or v2 event."""
    if event.get("version") == "2.0":
        http = event.get("requestContext", {}).get("http", {})
        return http.get("method", "GET"), http.get("path") or event.get("rawPath", "/")
    return event.get("httpMethod", "GET"), event.get("path", "/")


def event_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The API Gateway event that the command-line arguments describe."""
    if args.event:
        return _read_event(args.event)
    if not args.method or not args.path:
        raise ValueError("give METHOD and PATH, or --event FILE")
    headers = _headers(args.header)
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    body: str | bytes | None = None
    if args.json_body is not None:
        json.loads(args.json_body)  # fail here, not as a confusing 400 from the app
        body = args.json_body
        headers.setdefault("content-type", "application/json")
    elif args.form:
        pairs = [item.partition("=")[::2] for item in args.form]
        body = urlencode(pairs)
        headers.setdefault("content-type", "application/x-www-form-urlencoded")
    elif args.data is not None:
        body = Path(args.data[1:]).read_bytes() if args.data.startswith("@") else args.data
    parts = urlsplit(args.path)
    return build_event(
        args.method, parts.path or "/", fmt=args.fmt, headers=headers, body=body,
        query=parts.query, cookies=args.cookie,
    )


def decoded_body(response: dict[str, Any]) -> str:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(body)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return body  # binary: keep it base64 rather than print garbage
    return str(body)


def use_running_stack(data_dir: Path | None = None) -> bool:
    """Point at a running ``dev.py up`` stack's services when none are configured."""
    from local.embedded import DEFAULT_DATA_DIR
    from local.stack import STACK_ENV_FILE, configured_urls

    path = (data_dir or DEFAULT_DATA_DIR) / STACK_ENV_FILE
    if all(configured_urls()) or not path.exists():
        return False
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name in ("DATABASE_URL", "REDIS_URL", "APP_ENV", "JWT_SECRET_FILE"):
            os.environ.setdefault(name, value)
    print(f"using the running local stack's services ({path})", file=sys.stderr)
    return True


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command; the response goes to ``out`` (stdout), everything else to stderr."""
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        event = event_from_args(args)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        parser.error(str(exc))
    method, path = _event_route(event)
    function = args.function or function_for(method, path)
    if function is None:
        parser.error(f"no function serves {method} {path}; pass --function to force one")
    use_running_stack()
    # A local tool, run on purpose: without a stack's settings it signs with a throwaway
    # per-process secret rather than refusing to start.
    os.environ.setdefault("APP_ENV", "development")
    # One invocation, then the process ends: push its notifications before answering, as
    # Lambda does, rather than to a background publisher that would never get to run.
    os.environ.setdefault("OUTBOX_PUBLISH", "inline")
    get_settings.cache_clear()  # read with these, whatever was read before
    # Logs and prints of the handler go to stderr: stdout carries the response alone.
    with contextlib.redirect_stdout(sys.stderr):
        response = invoke(function, event)
    if args.body_only:
        print(decoded_body(response), file=out)
    else:
        print(json.dumps(response, indent=2, ensure_ascii=False), file=out)
    print(f"{function}: {method} {path} -> {response.get('statusCode')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
