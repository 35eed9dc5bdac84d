"""What `hub serve` and `hub worker` set for their whole process."""

from __future__ import annotations

import gc

# Collect the youngest objects every 20,000 allocations, not every 700: a request, a batch
# or a sync page allocates thousands of short-lived objects. With these settings (and the
# freeze below) a batch upsert took about a fifth less CPU per record (bench/upsert.py),
# and a sync stored about a quarter more records per second (bench/sync.py).
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Call once start-up is done: what was built so far (modules, schemas, routes) lives as
    long as the process, so it is kept out of every later full collection."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
