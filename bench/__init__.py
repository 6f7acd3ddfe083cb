"""Benchmarks: the ticket rush against pgbench, the notification fan-out, cold starts.

Run everything with ``python -m bench`` (or ``python3 dev.py bench``); see docs/benchmarks.md.
"""
