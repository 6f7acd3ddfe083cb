"""One normalization of email addresses, used for storage, lookup and every rate-limit key.

``normalize_email`` gives the key an address is stored, found and throttled under: trimmed,
NFKC-normalized and case-folded, the domain's trailing dot dropped, so ``Ａ@x.io``,
``a@X.IO.`` and ``A@x.io`` are one account and one guess budget whatever the database's
``lower()`` thinks of ``İ`` or ``ß``.

``email_skeleton`` is coarser: two addresses with the same skeleton look alike on screen
(Cyrillic ``а`` and Latin ``a``, ``0`` and ``o``, ``İ`` and ``i``), so registration refuses
an address whose skeleton an existing account already has. It follows the skeleton of
Unicode TR 39 (confusables.txt, bundled by ``confusable-homoglyphs``; nothing is
downloaded) and, stricter than TR 39, drops combining marks and case, so ``josé`` and
``jose`` collide too.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Shown left-to-right marks that confusables.txt's comments wrap right-to-left letters in.
_DIRECTION_MARKS = str.maketrans("", "", "\u200e\u200f")


def normalize_email(value: str) -> str:
    """The canonical key of an address: NFKC case fold of the trimmed text, without the
    domain's trailing dots (``x.io.`` is the fully qualified ``x.io``: one mailbox, so
    one account and one guess budget). Never raises."""
    folded = unicodedata.normalize("NFKC", value.strip()).casefold()
    key = unicodedata.normalize("NFKC", folded).strip()
    local, at, domain = key.rpartition("@")
    return f"{local}{at}{domain.rstrip('.')}" if at else key


def email_skeleton(value: str) -> str:
    """What the address looks like: equal skeletons are refused as look-alike duplicates."""
    prototypes = _prototypes()
    text = _bare(normalize_email(value))
    for _ in range(3):  # prototypes are fixed points; a few passes settle any chain
        mapped = "".join(prototypes.get(ch, ch) for ch in text)
        mapped = _bare(mapped.casefold())
        if mapped == text:
            break
        text = mapped
    return text


def _bare(text: str) -> str:
    """NFD without combining marks and invisible format characters."""
    return "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) not in ("Mn", "Me", "Cf")
    )


@lru_cache(maxsize=1)
def _prototypes() -> dict[str, str]:
    """Each confusable character to its prototype (loaded on first registration, ~50 ms).

    The bundled data list confusables.txt's pairs in both directions. A prototype is never
    itself mapped, so the side of a pair with several partners, or the multi-character
    side, is the prototype; a lone pair of single characters maps both to the smaller.
    """
    from confusable_homoglyphs.confusables import confusables_data

    partners = {
        key.translate(_DIRECTION_MARKS): [e["c"].translate(_DIRECTION_MARKS) for e in entries]
        for key, entries in confusables_data.items()
    }
    table: dict[str, str] = {}
    for char, others in partners.items():
        if len(char) != 1 or len(others) != 1:
            continue
        other = others[0]
        if len(other) > 1 or len(partners.get(other, ())) > 1:
            table[char] = other
        elif other != char:
            table[char] = min(char, other)
    return table


def rekey(database_url: str | None = None) -> tuple[int, int]:
    """Recompute every user's key and skeleton in Python (after migration 0005's backfill).

    The oldest account keeps a contested key; a later look-alike gets NULL (it cannot sign
    in until an operator settles it). Returns (rows changed, rows left without a key).
    """
    import psycopg

    from shared.platform.settings import get_settings

    with psycopg.connect(database_url or get_settings().database_url) as conn:
        conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")  # no registration meanwhile
        rows = conn.execute("SELECT id, email, email_key, email_skeleton FROM users ORDER BY id").fetchall()
        keys: set[str] = set()
        skeletons: set[str] = set()
        wanted: dict[int, tuple[str | None, str | None]] = {}
        for user_id, email, _, _ in rows:
            key, skeleton = normalize_email(email), email_skeleton(email)
            if key in keys or skeleton in skeletons:
                wanted[user_id] = (None, None)
            else:
                keys.add(key)
                skeletons.add(skeleton)
                wanted[user_id] = (key, skeleton)
        changed = [(uid, *wanted[uid]) for uid, _, k, s in rows if (k, s) != wanted[uid]]
        with conn.cursor() as cur:
            # Clear first so a row may take a key another row gives up in the same run.
            cur.executemany("UPDATE users SET email_key = NULL, email_skeleton = NULL WHERE id = %s",
                            [(uid,) for uid, _, _ in changed])
            cur.executemany("UPDATE users SET email_key = %s, email_skeleton = %s WHERE id = %s",
                            [(k, s, uid) for uid, k, s in changed if k is not None])
    return len(changed), sum(1 for key, _ in wanted.values() if key is None)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Email keys: `rekey` recomputes them for every user.")
    parser.add_argument("command", choices=["rekey"])
    parser.add_argument("--database-url", help="defaults to DATABASE_URL")
    args = parser.parse_args(argv)
    changed, unkeyed = rekey(args.database_url)
    print(f"{changed} user(s) re-keyed; {unkeyed} look-alike duplicate(s) without a key")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
