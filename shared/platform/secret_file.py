"""Create a random secret in a file once: the JWT secret of ``dev.py up`` and compose's init services.

``python -m shared.platform.secret_file PATH [--owner UID:GID] [--mode 0600]`` writes 48 random
bytes (URL-safe base64, drawn until ``jwt_secret_problem`` accepts them) to PATH unless
the file exists, so an init service can run it on every ``up`` and the secret survives
restarts. The file is created with ``O_EXCL`` and its final mode from the start, so two
starters cannot both write it and no reader ever sees a half-written or world-readable
secret. Used for ``JWT_SECRET_FILE`` and the metrics scrape token (``METRICS_TOKEN_FILE``
for the api, ``credentials_file`` for Prometheus).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from shared.platform.settings import generate_jwt_secret


def ensure_secret(path: Path, owner: tuple[int, int] | None = None, mode: int = 0o600) -> bool:
    """Create ``path`` with a fresh random secret unless it exists; True when created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        created = False
    else:
        with os.fdopen(fd, "w") as out:
            out.write(generate_jwt_secret() + "\n")
        created = True
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(mode)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.platform.secret_file", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--owner", help="UID:GID to own the file (the readers' user and group)")
    parser.add_argument("--mode", default="0600", help="file mode, octal (default 0600)")
    args = parser.parse_args(argv)
    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid or uid))
    created = ensure_secret(args.path, owner, int(args.mode, 8))
    print(f"{args.path}: {'created' if created else 'kept'}")  # never the secret itself
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
