"""Chaos runs of the whole control plane: real processes, real containers, a monkey that kills them.

``python -m chaos --help`` (or ``make chaos CHAOS_ARGS='--iterations 5'``); see docs/chaos.md.
"""
