"""Keep the garbage collector's full passes short and rare in the long-running servers.

CPython's full collection walks every tracked object, however old, and the event loop stands still
meanwhile. Two measures, both for the API and the worker (figures in docs/fleet-scale.md and docs/benchmarks.md):

* **freeze the startup heap.** Both servers build a few hundred thousand objects at startup (modules,
  pydantic schemas, SQLAlchemy mappers, Temporal's definitions) that live as long as the process.
  Walked on every full pass they paused the API's requests for 90-160 ms (its page p99) and, with
  500 sync loops, the worker's loop for ~360 ms every few seconds (the fleet's lag tail);
* **fewer full passes.** By default a full pass follows every 10th middle-generation pass, which under
  a busy fleet was every ~8 s. Young objects still die in the young generations (a larger first
  generation also promotes fewer short-lived ones); only reference cycles that survive into the
  old generation wait longer (up to ~10x) to be reclaimed.
"""

from __future__ import annotations

import gc

# (first generation's allocations, passes of the first per pass of the second, ... of the second per full)
THRESHOLDS = (7_000, 10, 100)


def settle_heap() -> int:
    """Collect once, exempt every surviving object from later passes and space full passes out.

    Call once everything that lives as long as the process is built; returns how many objects were frozen.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    return gc.get_freeze_count()
