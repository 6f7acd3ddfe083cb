"""Create a random secret in a file once, for containers that share it through a volume.

``python -m shared.secret_file PATH [--owner UID:GID] [--mode 0440]`` writes a fresh
random token to PATH unless the file already holds one, so a compose init service can
run it on every ``up`` and the secret survives restarts. Used for the metrics scrape
token (the api reads it via ``METRICS_TOKEN_FILE``, Prometheus via ``credentials_file``);
nothing about it is specific to metrics.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path


def ensure_secret(path: Path, owner: tuple[int, int] | None = None, mode: int = 0o440) -> bool:
    """Write a new secret to ``path`` unless it holds one already; True when written."""
    if path.exists() and len(path.read_text().strip()) >= 16:
        created = False
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        os.replace(tmp, path)
        created = True
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(mode)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--owner", help="UID:GID to own the file (the readers' user and group)")
    parser.add_argument("--mode", default="0440", help="file mode, octal (default 0440)")
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
