"""Accounts: who a caller is. Users, passwords, tokens, sessions and email verification."""
