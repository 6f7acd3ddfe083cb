"""Account administration from a shell (no HTTP route grants roles):

    python -m functions.users.admin set-role EMAIL organizer|customer
    python -m functions.users.admin sign-out EMAIL

Both end every session of the account at once (access tokens through Redis, refresh
tokens in PostgreSQL). Against the dev stack: ``python3 dev.py users ...``.
"""

from __future__ import annotations

import argparse
import sys

from shared.accounts import users
from shared.accounts.tokens import ROLES
from shared.platform.errors import AppError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions.users.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    role = commands.add_parser("set-role", help="change an account's role; its sessions end")
    role.add_argument("email")
    role.add_argument("role", choices=ROLES)
    out = commands.add_parser("sign-out", help="end every session of an account")
    out.add_argument("email")
    args = parser.parse_args(argv)
    try:
        if args.command == "set-role":
            user = users.set_role(email=args.email, role=args.role)
            print(f"user {user['id']} ({user['email']}) is now {user['role']}; every session ended")
        else:
            user = users.sign_out_everywhere(email=args.email)
            print(f"user {user['id']} ({user['email']}): every session ended")
    except AppError as exc:
        print(f"error: {exc.message} ({exc.code})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
