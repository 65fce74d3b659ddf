"""``python -m bench [filter ...]``: run benchmarks, print a table, write ``bench/results/latest.json``."""

from bench._runner import main

raise SystemExit(main())
