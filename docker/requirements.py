"""Print the pip requirements of one image target, read from pyproject.toml.

    python docker/requirements.py api|worker|lambda [pyproject.toml]

Each image installs only what its process imports: the HTTP functions never import
Celery, and the Lambda image ships no server. Used by the Dockerfile's first stage.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Which optional-dependency groups each image target needs on top of the core list.
TARGET_EXTRAS: dict[str, tuple[str, ...]] = {
    "api": ("server",),
    "worker": ("worker",),
    "lambda": (),
}


def requirements(pyproject: dict, target: str) -> list[str]:
    project = pyproject["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    wanted, seen = list(TARGET_EXTRAS[target]), set()
    found: list[str] = list(project.get("dependencies", []))
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[(.+)\]", req.replace(" ", ""))
            if own:  # "ticketing-backend[worker,server]": expand our own extras
                wanted.extend(own.group(1).split(","))
            else:
                found.append(req)
    return list(dict.fromkeys(found))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TARGET_EXTRAS:
        print(f"usage: requirements.py {'|'.join(TARGET_EXTRAS)} [pyproject.toml]", file=sys.stderr)
        return 2
    path = Path(argv[1]) if len(argv) > 1 else Path("pyproject.toml")
    print("\n".join(requirements(tomllib.loads(path.read_text()), argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
