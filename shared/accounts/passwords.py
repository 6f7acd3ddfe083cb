"""The common-password check: a bundled list, never fetched at run time.

The list is zxcvbn's 30,000 most frequent leaked passwords (the ``zxcvbn`` package ships it
as Python data). It is loaded on the first registration (~30 ms), not at import, so login
and the booking functions never pay for it.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(word.casefold() for word in FREQUENCY_LISTS["passwords"])


def is_common_password(password: str) -> bool:
    """Whether the password, in any case, is on the list."""
    return password.casefold() in _common()
