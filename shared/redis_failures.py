"""What a Redis call can raise when the server or the connection under it goes away.

redis-py raises its own errors for most failures, but a connection closed under a
concurrent caller surfaces as ``ValueError`` ("I/O operation on closed file") or
``OSError``. Every caller that degrades when Redis is down (rate limits, the session
check, outbox publishing) catches all of them, so none turns into a 500.
"""

from __future__ import annotations

import redis

REDIS_FAILURES: tuple[type[Exception], ...] = (redis.RedisError, OSError, ValueError)
