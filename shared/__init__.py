"""The data layer every function shares, in four layers (imports point downwards only).

``web`` (FastAPI plumbing) -> ``accounts`` | ``ticketing`` (the domain) -> ``notifications``
(outbox, dead letters) -> ``platform`` (settings, database, logging, metrics). See
``docs/architecture.md``; ``python3 dev.py lint`` enforces the directions.
"""
