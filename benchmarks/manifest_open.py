"""Cost of opening a dataset: the manifest is derived from (or checked against) every case record.

Writes ``--cases`` tiny cases (real records: stats with the body histogram, one generation each)
into a store, consolidates, then times what readers do at open: the stored manifest alone (all
that was read before the records became the truth), ``manifest()`` when the consolidated copy
agrees with the records, ``done_cases()``, and ``manifest()`` when it is stale (one case
rewritten since the consolidation: rebuilt from the records, statistics pooled again).

    python benchmarks/manifest_open.py                  # 1000 cases in a temporary local folder
    python benchmarks/manifest_open.py --cases 5000 --root /data/bench-store
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage.manifest import plan_hash  # noqa: E402
from storage.store import DatasetStore  # noqa: E402

PLAN = {"target_spacing_mm": [1.5, 1.5, 2.0], "chunk_vox": [32, 64, 64]}


def write_cases(root: str, n: int) -> DatasetStore:
    store = DatasetStore(root, "bench", create=True)
    store.ensure(PLAN, {0: "background", 1: "organ"})
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(-1024, 1500, (8, 16, 16)).astype(np.int16)
        label = (image > 300).astype(np.uint8)
        attrs = {"spacing": (1.5, 1.5, 2.0), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
                 "source_checksum": f"sha256:{i:064x}", "plan_hash": plan_hash(PLAN)}
        store.write_case(f"case_{i:05d}", image, label, attrs)
    store.consolidate_manifest()
    return store


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, max) wall seconds of ``fn()`` on a fresh store object each time."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), max(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--root", default=None, help="store root (default: a temporary local folder)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="pgl-manifest-bench-")
    t0 = time.perf_counter()
    store = write_cases(root, args.cases)
    print(f"wrote {args.cases} cases in {time.perf_counter() - t0:.1f} s at {root}")
    fresh = lambda: DatasetStore(root, "bench")  # noqa: E731 - one new reader per timing
    rows = [("stored manifest only (before)", lambda: fresh()._stored_manifest()),
            ("manifest(), copy agrees", lambda: fresh().manifest()),
            ("done_cases()", lambda: fresh().done_cases())]
    for name, fn in rows:
        med, worst = timed(fn, args.repeats)
        print(f"{name:32s} median {med * 1e3:7.1f} ms   max {worst * 1e3:7.1f} ms")
    first = store.done_cases()[0]
    store.write_case(first, store.read_full(first), store.read_full(first, "label"),
                     {**store.case_attrs(first), "source": ""})
    med, worst = timed(lambda: fresh().manifest(), args.repeats)
    print(f"{'manifest(), copy stale':32s} median {med * 1e3:7.1f} ms   max {worst * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
