"""The dataset manifest (format version 1): hashing, per-case records and their consolidation.

A worker that finishes a case writes one small JSON *record* (``_cases/<case_id>.json``); the
records are the truth about which cases are done. A single writer folds all records into the
*manifest* kept in the dataset group's "pgl_dataset" attribute and in ``manifest.json``; that
copy is a cache, checked against the records whenever the manifest is read. This module builds
records and manifests as plain dicts and hashes them; it does no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np

from storage.layout import FORMAT_VERSION, STATS_CLIP_HU


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, ASCII, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_hash(plan: dict) -> str:
    """sha256 (hex) of the canonical JSON of a preprocessing plan dict."""
    return sha256_hex(canonical_json(plan))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def done_record(case_attrs: dict[str, Any], generation: str) -> dict[str, Any]:
    """The completion record of a case written as ``generation`` (the folder of its arrays), from
    its "pgl_case" attributes."""
    keys = ("case_id", "shape_zyx", "spacing", "source_checksum", "plan_hash", "labelled",
            "stats", "label_counts")
    rec = {k: case_attrs[k] for k in keys}
    rec["source"] = case_attrs.get("source", "")  # the input it came from (relative to the input root)
    rec.update(format_version=FORMAT_VERSION, status="done", generation=generation, written=now_iso())
    return rec


def failed_record(case_id: str, reason: str, source: str) -> dict[str, Any]:
    """The record of a case that could not be written; ``reason`` says why."""
    return {"format_version": FORMAT_VERSION, "case_id": case_id, "status": "failed",
            "reason": str(reason), "source": str(source), "written": now_iso()}


def _manifest_entry(rec: dict[str, Any]) -> dict[str, Any]:
    if rec.get("status") == "done":
        keys = ("status", "shape_zyx", "spacing", "source_checksum", "plan_hash", "labelled")
        entry = {k: rec.get(k) for k in keys}
        if "generation" in rec:  # format version 1 records name none
            entry["generation"] = rec["generation"]
        return entry
    return {"status": "failed", "reason": rec.get("reason", ""), "source": rec.get("source", "")}


def manifest_cases(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The manifest's "cases" mapping (case id -> entry) of the given records."""
    return {r["case_id"]: _manifest_entry(r) for r in sorted(records, key=lambda r: r["case_id"])}


def pooled_stats(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Voxel-weighted mean / std of clipped HU over all done cases (exact pooling)."""
    n = 0
    total = 0.0
    total_sq = 0.0
    lo, hi = math.inf, -math.inf
    bodies = []
    for rec in records:
        st = rec.get("stats") or {}
        bodies.append(st.get("body"))
        n += int(st.get("n_vox", 0))
        total += float(st.get("sum_hu", 0.0))
        total_sq += float(st.get("sumsq_hu", 0.0))
        lo = min(lo, st.get("min_hu", lo))
        hi = max(hi, st.get("max_hu", hi))
    mean = total / n if n else None
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0)) if n else None
    return {"mean_hu": mean, "std_hu": std, "min_hu": None if n == 0 else lo,
            "max_hu": None if n == 0 else hi, "n_vox": n, "clip_hu": list(STATS_CLIP_HU),
            "region": "whole_volume", "body": pool_body_stats(bodies)}


def pool_body_stats(bodies: Iterable[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Sum of several :func:`storage.layout.body_stats` (cases or datasets); None when any lacks
    them (a store written before body statistics existed) or none is given."""
    out: dict[str, Any] | None = None
    hist = np.zeros(0, dtype=np.int64)
    for body in bodies:
        if not body:
            return None
        if out is None:
            out, hist = dict(body), np.asarray(body["hist"], dtype=np.int64)
            continue
        if (body["hist_lo_hu"], body["bin_hu"], len(body["hist"])) != (out["hist_lo_hu"], out["bin_hu"], hist.size):
            return None
        out["n_vox"] += body["n_vox"]
        out["sum_hu"] += body["sum_hu"]
        out["sumsq_hu"] += body["sumsq_hu"]
        hist += np.asarray(body["hist"], dtype=np.int64)
    if out is not None:
        out["hist"] = hist.tolist()
    return out


def build_manifest(
    name: str, plan: dict, label_names: dict[str, str], records: Iterable[dict[str, Any]]
) -> dict[str, Any]:
    """The "pgl_dataset" manifest from the dataset's plan and its case records.

    A done record whose plan_hash differs from the dataset's is listed as done with its own
    plan_hash; :func:`current_done` leaves it out (it is re-written on the next ingest).
    """
    recs = sorted(records, key=lambda r: r["case_id"])
    p_hash = plan_hash(plan)
    current = [r for r in recs if r.get("status") == "done" and r.get("plan_hash") == p_hash]
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "plan": plan,
        "plan_hash": p_hash,
        "label_names": {str(k): str(v) for k, v in label_names.items()},
        "cases": manifest_cases(recs),
        "stats": pooled_stats(current),
        "updated": now_iso(),
    }


def current_done(manifest: dict[str, Any]) -> list[str]:
    """Sorted ids of done cases written with the manifest's current plan."""
    ph = manifest.get("plan_hash")
    return sorted(c for c, e in manifest.get("cases", {}).items()
                  if e.get("status") == "done" and e.get("plan_hash") == ph)


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 of canonical JSON of [plan_hash, [[case_id, source_checksum], ...]] (done, sorted).

    Independent of timestamps, failures and record order: two stores holding the same cases
    preprocessed with the same plan have the same hash.
    """
    cases = manifest.get("cases", {})
    done = [[c, cases[c].get("source_checksum")] for c in current_done(manifest)]
    return sha256_hex(canonical_json([manifest.get("plan_hash"), done]))
