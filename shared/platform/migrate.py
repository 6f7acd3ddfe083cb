"""Versioned SQL migrations, applied in order, safe when several processes run them at once.

Each ``migrations/NNNN_name.sql`` runs once in its own transaction. A session-level
advisory lock serialises concurrent runners (two containers starting together), and the
checksum of each applied file is recorded so an edited migration is detected, not re-run.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from shared.platform.settings import get_settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant shared by every runner of this project.
ADVISORY_LOCK_KEY = 0x7469636B6574  # "ticket"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        migrations.append(Migration(int(version), name, path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {directory}")
    return migrations


def migrate(database_url: str | None = None, *, verbose: bool = False) -> list[int]:
    """Apply pending migrations; return the versions this call applied."""
    url = database_url or get_settings().database_url
    applied_now: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                row[0]: row[1]
                for row in conn.execute("SELECT version, checksum FROM schema_migrations")
            }
            for migration in discover():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise RuntimeError(
                            f"migration {migration.version}_{migration.name} was edited "
                            "after it was applied; add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.version)
                if verbose:
                    print(f"applied {migration.version:04d}_{migration.name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply pending database migrations.")
    parser.add_argument("--database-url", help="defaults to DATABASE_URL")
    args = parser.parse_args(argv)
    applied = migrate(args.database_url, verbose=True)
    print(f"{len(applied)} migration(s) applied; schema is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
