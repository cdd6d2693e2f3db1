"""One case from raw CT to the store: read -> canonical orientation -> resample -> int16 -> Zarr.

:func:`ingest_case` is what a worker runs per case. It never raises for a data problem: a refused
or unreadable case is recorded in the store (``status: failed`` with the reason) and returned as a
failed :class:`CaseResult`, so the other cases complete. Transient I/O errors (network, throttling)
are re-raised so the orchestrator can retry them.

Memory: one case at a time. NIfTI inputs are decoded a slice at a time as they are resampled
(``storage.readers.nifti_stream``), so neither the input nor the output is ever whole; a DICOM
series (or another format) is held whole while its output is computed a chunk row at a time
(``storage.geometry.Resampled``, ``DatasetStore.write_case``). Threads: the inputs' checksum of a
case with nothing to compare it with is computed beside its reading and writing, and stored with
the attributes after the arrays (``DatasetStore.write_case``'s ``late_attrs``); statistics and
encoding run beside the resampling (``storage.case_arrays``). BLAS is held to one thread during a case
(nothing here needs it; its idle threads would spin on the worker's cores).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from storage.case_stats import label_counts
from storage.checksum import sha256_files
from storage.errors import TRANSIENT_ERRORS, InputError, RefusedInput, UnreadableInput, is_transient
from storage.geometry import Resampled, canonicalize, median_spacing
from storage.plan import Plan, PlanRequest
from storage.probe import probe_spacing
from storage.readers import CaseSource, read_case
from storage.store import DatasetStore
from storage.uri import is_object_store
from storage.volume import Volume

log = logging.getLogger(__name__)
_PENDING = "sha256:pending"  # the checksum while it is being computed beside the conversion


@dataclass
class CaseResult:
    """Outcome of one case. ``status``: done (written), skipped (unchanged), failed (with reason)."""

    case_id: str
    status: Literal["done", "skipped", "failed"]
    reason: str = ""
    source: str = ""
    seconds: float = 0.0
    shape_zyx: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prepare(volume: Volume, plan: Plan, is_label: bool) -> Resampled:
    """The canonical, resampled volume, computed a z range at a time as the store writes it."""
    vol = canonicalize(volume, is_label=is_label)
    return Resampled(vol, plan.target_spacing_mm, is_label=is_label, to_int16=not is_label)


def case_attrs(image: Resampled, meta: dict[str, Any], checksum: str, plan: Plan) -> dict[str, Any]:
    """Geometry and provenance; the store adds intensity stats and label counts itself."""
    attrs: dict[str, Any] = {
        "spacing": list(image.spacing_mm),
        "origin": list(image.vol.origin_mm),
        "direction": list(image.vol.direction),
        "shape_zyx": list(image.shape),
        "original_spacing": list(meta.get("original_spacing", [])),
        "original_size": list(meta.get("original_size", [])),
        "source_format": meta.get("format", ""),
        "source_checksum": checksum,
        "plan_hash": plan.hash,
    }
    return attrs


def check_declared_labels(label: np.ndarray, label_names: dict[str, str], uri: str) -> None:
    """Refuse a label map with values the dataset does not declare (or a dataset that declares none),
    so that the mistake stops here, naming the file and the values, not later in fine-tuning."""
    check_declared_counts(label_counts(label), label_names, uri)


def check_declared_counts(counts: dict[str, int], label_names: dict[str, str], uri: str) -> None:
    """:func:`check_declared_labels` on the label's voxel counts per value (``{"1": n, ...}``)."""
    declared = {int(k) for k in label_names}
    if not declared - {0}:
        raise RefusedInput(uri, "labelled case, but the dataset declares no label names (dataset.json "
                           "'labels', e.g. {\"0\": \"background\", \"1\": \"liver\"})")
    found = {int(v) for v, n in counts.items() if n}
    extra = sorted(found - declared - {0})
    if extra:
        raise RefusedInput(uri, f"label values {extra} are not declared by the dataset (declared: "
                           f"{sorted(declared)}); fix the label map or dataset.json 'labels'")


def with_source(attrs: dict[str, Any], source: CaseSource) -> dict[str, Any]:
    return {**attrs, "source": source.source} if source.source else attrs


def _convert(source: CaseSource, plan: Plan, checksum: str,
             storage_options: dict | None) -> tuple[Resampled, Resampled | None, dict[str, Any]]:
    """The case read, as resampled slab sources (computed when the store writes them) and meta."""
    image, label, meta = read_case(source, storage_options=storage_options, source_checksum=checksum, stream=True,
                                   **plan.read_options())
    out = _prepare(image, plan, is_label=False)
    label_out = None
    if label is not None:
        if label.array.dtype != np.uint8:
            label.array = label.array.astype(np.uint8)
        label_out = _prepare(label, plan, is_label=True)
        if label_out.shape != out.shape:
            raise RefusedInput(
                source.label_uri or "", f"label grid {label_out.shape} != image grid {out.shape} "
                "after resampling"
            )
    return out, label_out, meta


def ingest_case(
    source: CaseSource,
    root_uri: str,
    dataset: str,
    plan: Plan,
    storage_options: dict | None = None,
    force: bool = False,
) -> CaseResult:
    """Convert one case into ``<root_uri>/<dataset>/<case_id>`` (atomically). See module doc."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _ingest_case(source, root_uri, dataset, plan, storage_options, force)


def _ingest_case(source: CaseSource, root_uri: str, dataset: str, plan: Plan, storage_options: dict | None,
                 force: bool) -> CaseResult:
    t0 = time.perf_counter()
    store = DatasetStore(root_uri, dataset, storage_options)
    src = source.image_uris[0] if len(source.image_uris) == 1 else source.image_uris[0].rsplit("/", 1)[0]
    uris = source.image_uris + ((source.label_uri,) if source.label_uri else ())
    try:
        previous = store.case_record(source.case_id)
        if previous and previous.get("status") == "done" and source.source and previous.get("source") \
                and previous["source"] != source.source:
            # never overwrite a case with another input that maps to its id (not even with --force)
            return CaseResult(source.case_id, "failed", f"case id {source.case_id!r} already holds "
                              f"{previous['source']!r}; refusing to overwrite it with {source.source!r}", src,
                              time.perf_counter() - t0)
        with ThreadPoolExecutor(1, thread_name_prefix="pgl-checksum") as pool:
            if force or not (previous and previous.get("status") == "done"):
                # nothing to compare with: the checksum is computed beside the reading and writing
                # (hashing releases the GIL) and stored with the attributes, after the arrays
                hashing = pool.submit(sha256_files, list(uris), storage_options)
                checksum, late = _PENDING, (lambda: {"source_checksum": hashing.result()})
            else:
                checksum, late = sha256_files(list(uris), storage_options), None
                if store.is_done(source.case_id, checksum, plan.hash):
                    store.sweep_case(source.case_id)  # what a write killed before or after its record left
                    return CaseResult(source.case_id, "skipped", "unchanged source and plan", src,
                                      time.perf_counter() - t0)
            image, label, meta = _convert(source, plan, checksum, storage_options)
            names = store.label_names() if label is not None else {}
            store.write_case(source.case_id, image, label,
                             with_source(case_attrs(image, meta, checksum, plan), source),
                             chunk_vox=plan.chunk_vox, shard_vox=plan.shard_vox, zstd_level=plan.zstd_level,
                             check_labels=lambda counts: check_declared_counts(counts, names, source.label_uri or src),
                             late_attrs=late)
        return CaseResult(source.case_id, "done", "", src, time.perf_counter() - t0, list(image.shape))
    except TRANSIENT_ERRORS:
        raise
    except (RefusedInput, UnreadableInput) as err:
        reason, culprit = err.reason, err.source or src
    except MemoryError:
        reason, culprit = "out of memory while converting this case", src
    except Exception as err:  # noqa: BLE001 - a data problem must never end the whole run
        if is_transient(err):  # the object store's client errors (botocore, aiohttp): retry, record nothing
            raise
        log.debug("unexpected error in case %s", source.case_id, exc_info=True)
        reason, culprit = f"unexpected {type(err).__name__}: {str(err)[:300]}", src
    store.write_failure(source.case_id, reason, culprit)
    return CaseResult(source.case_id, "failed", reason, culprit, time.perf_counter() - t0)


def _plausible(spacing: tuple[float, float, float], request: PlanRequest) -> bool:
    lo, hi = request.spacing_range_mm
    return all(lo <= s <= hi for s in spacing)


def _note_kept_settings(dataset: str, plan: Plan, request: PlanRequest) -> None:
    """Warn when the request asks the reader for other settings than the dataset's fixed plan."""
    asked = Plan.from_request(request, plan.target_spacing_mm, False).read_options()
    kept = {k: v for k, v in plan.read_options().items() if asked[k] != v}
    if kept:
        log.warning("dataset %s keeps its plan's reader settings %s (requested %s): the plan is fixed when a "
                    "dataset is created; use another dataset name to change them", dataset, kept,
                    {k: asked[k] for k in kept})


def choose_plan(ds: DatasetStore, cases: list[CaseSource], request: PlanRequest,
                storage_options: dict | None = None) -> Plan:
    """The dataset's plan: the one its manifest holds (a request for another spacing is refused),
    else ``request`` with the spacing decided (the median over the cases' headers when not given;
    spacings outside ``request.spacing_range_mm`` are left out: those cases will be refused)."""
    existing = ds.plan() if ds.exists() else None
    if existing:
        plan = Plan.from_dict(existing)
        if request.target_spacing_mm and tuple(request.target_spacing_mm) != plan.target_spacing_mm:
            raise InputError(
                f"dataset {ds.dataset} already uses target spacing {plan.target_spacing_mm}; "
                f"requested {request.target_spacing_mm}. Use another dataset name.")
        _note_kept_settings(ds.dataset, plan, request)
        return plan
    spacing = request.target_spacing_mm
    if spacing is None:
        probes = []
        for c in cases:
            try:
                probe = probe_spacing(c, storage_options)
            except Exception as err:  # noqa: BLE001 - the case will fail later with its reason
                log.debug("spacing probe failed for %s: %s", c.case_id, err)
                continue
            if _plausible(probe, request):
                probes.append(probe)
        if not probes:
            raise InputError(f"no readable case in {len(cases)} to derive the median spacing from; "
                             "give --target-spacing X,Y,Z")
        spacing = median_spacing(probes)
    return Plan.from_request(request, spacing, is_object_store(ds.root_uri))
