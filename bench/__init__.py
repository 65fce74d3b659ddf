"""Benchmarks: heavy, real-infrastructure measurements kept out of the unit tests.

``python -m bench`` (``make bench``) runs every ``bench/bench_*.py`` module; each exposes
``async def run() -> list[Result]``. See ``docs/benchmarks.md``.
"""
