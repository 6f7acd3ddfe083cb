"""Create a random secret file once, for JWT_SECRET_FILE: the dev stack and compose's init.

    python -m shared.secretfile PATH [--owner UID:GID]

An existing file is kept (tokens survive restarts); a new one holds 48 random bytes
(URL-safe base64), mode 0600, created atomically so two starters cannot both write it.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path


def ensure_secret_file(path: Path, owner: tuple[int, int] | None = None) -> bool:
    """Create ``path`` with a fresh random secret unless it exists; True if created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48) + "\n")
    if owner is not None:
        os.chown(path, *owner)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.secretfile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--owner", help="UID:GID to own a new file (the app's user)")
    args = parser.parse_args(argv)
    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        owner = (int(uid), int(gid or uid))
    created = ensure_secret_file(args.path, owner)
    print(f"{args.path}: {'created' if created else 'kept'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
