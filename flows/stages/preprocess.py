"""The ``preprocess`` flow: raw CT (MSD folder, volume folder or DICOM tree) to a Zarr dataset.

One Prefect task per case, run on Dask. The flow is thin: discovery, planning and conversion are
``storage`` functions; this module only fans them out, retries transient I/O errors, shows progress
and summarises.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from tqdm import tqdm

from flows import artifacts
from flows.cluster import dask_task_runner
from flows.retries import retry_transient
from flows.stages.keys import resolve_config
from flows.stages.params import Unset
from storage.errors import InputError, describe, is_transient
from storage.ingest import CaseResult, choose_plan, ingest_case
from storage.plan import Plan, PlanRequest
from storage.readers import CaseSource, discover_cases
from storage.store import DatasetStore
from storage.store_root import check_store_root
from storage.uri import check_uris, redact_uri, s3_options_from_env


@dataclass
class PreprocessSummary:
    """What a preprocess run did. ``failed``: (case, source, reason); ``ignored``: input files that
    are not cases (hidden, not a volume or DICOM), relative to the input."""

    dataset: str
    store: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    manifest_hash: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    manifest_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "store": self.store, "done": self.done, "skipped": self.skipped,
                "failed": [list(f) for f in self.failed], "manifest_hash": self.manifest_hash,
                "plan": self.plan, "ignored": self.ignored, "manifest_error": self.manifest_error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessSummary":
        return cls(d["dataset"], d["store"], list(d["done"]), list(d["skipped"]),
                   [tuple(f) for f in d["failed"]], d.get("manifest_hash", ""), d.get("plan", {}),
                   list(d.get("ignored", [])), d.get("manifest_error", ""))

    @property
    def ok(self) -> bool:
        return not self.failed and not self.manifest_error

    def lines(self) -> list[str]:
        out = [f"dataset {self.dataset} in {self.store}: {len(self.done)} done, "
               f"{len(self.skipped)} skipped (unchanged), {len(self.failed)} failed"]
        out += [f"  FAILED {case}: {reason} [{src}]" for case, src, reason in self.failed]
        if self.manifest_error:
            out.append(f"  manifest not updated: {self.manifest_error} (the case records are; rerun to rebuild it)")
        if self.ignored:
            out.append(f"  ignored {len(self.ignored)} file(s) that are not CT volumes or DICOM (or hidden): "
                       + _first_few(self.ignored))
        return out


def _first_few(names: list[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", ... ({more} more)" if more > 0 else "")


# Prefect's share of the retry budget for transient storage errors (docs/guarantees.md, "When a
# service goes away mid-run"); each attempt's S3 calls are retried by botocore first.
RETRIES = 2
RETRY_DELAYS_S = [2, 10]


@task(name="ingest-case", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S, retry_condition_fn=retry_transient,
      task_run_name="ingest-{source.case_id}")
def ingest_case_task(source: CaseSource, store: str, dataset: str, plan: Plan,
                     storage_options: dict | None, force: bool) -> dict:
    return ingest_case(source, store, dataset, plan, storage_options, force).to_dict()


@task(name="consolidate-manifest", retries=RETRIES, retry_delay_seconds=RETRY_DELAYS_S,
      retry_condition_fn=retry_transient)
def consolidate_task(store: str, dataset: str, storage_options: dict | None) -> str:
    """Rebuild the dataset's manifest from its case records; returns its hash."""
    ds = DatasetStore(store, dataset, storage_options)
    ds.consolidate_manifest()
    return ds.manifest_hash()


def failure_reason(err: BaseException) -> str:
    """One line for a case whose task raised: a transient error that outlived its retries names
    what did not answer (the endpoint and object, never a credential)."""
    if is_transient(err):
        return f"storage unreachable after {RETRIES + 1} attempts: {redact_uri(describe(err))}"
    return describe(err)


@task(name="discover-cases")
def discover_task(input: str, storage_options: dict | None) -> tuple[list[CaseSource], list, dict]:
    return discover_cases(input, storage_options)


def _collect(futures: dict, summary: PreprocessSummary, progress: bool) -> str:
    """Gather the cases' results into ``summary``; returns "" or, when a case's storage stayed
    unreachable through its whole retry budget, that reason: the cases not finished by then are
    given up (not started, or their result ignored) instead of each spending its own budget against
    a store that does not answer, and reported failed with it."""
    bar = tqdm(total=len(futures), desc=f"preprocess {summary.dataset}", unit="case", disable=not progress)
    shown = artifacts.Progress(artifacts.artifact_key("preprocess", summary.dataset, "progress"), len(futures))
    pending, unreachable = dict(futures), ""

    def add(res: CaseResult) -> None:
        if res.status == "failed":
            summary.failed.append((res.case_id, res.source, res.reason))
        else:
            (summary.done if res.status == "done" else summary.skipped).append(res.case_id)
        n = len(futures) - len(pending)
        bar.set_postfix(done=len(summary.done), skipped=len(summary.skipped), failed=len(summary.failed))
        bar.update(1)
        shown.update(n, f"{n}/{len(futures)} cases: {len(summary.done)} done, {len(summary.skipped)} skipped "
                        f"(unchanged), {len(summary.failed)} failed")

    for fut in as_completed(list(futures)):
        source = pending.pop(fut)
        try:
            res = CaseResult(**fut.result())
        except Exception as err:  # transient error that outlived its retries, or a crashed worker
            res = CaseResult(source.case_id, "failed", failure_reason(err), source.image_uris[0])
            unreachable = res.reason if is_transient(err) else ""
        add(res)
        if unreachable:
            break
    for fut, source in list(pending.items()):
        wrapped = getattr(fut, "wrapped_future", None)
        if wrapped is not None and not wrapped.done():
            wrapped.cancel()  # a queued case never starts; a running one finishes unobserved
        pending.pop(fut)
        add(CaseResult(source.case_id, "failed", f"given up ({unreachable})", source.image_uris[0]))
    bar.close()
    return unreachable


def publish_summary(summary: PreprocessSummary) -> None:
    """The run's result artifact ``preprocess-<dataset>``: one row per case (failed first, with the
    reason), the summary line as its description."""
    rows = [{"case": c, "status": "failed", "reason": redact_uri(r), "source": redact_uri(s)}
            for c, s, r in summary.failed]
    rows += [{"case": c, "status": "done", "reason": "", "source": ""} for c in summary.done]
    rows += [{"case": c, "status": "skipped", "reason": "unchanged", "source": ""} for c in summary.skipped]
    artifacts.table(artifacts.artifact_key("preprocess", summary.dataset), rows, redact_uri(summary.lines()[0]))


def run_preprocess(input: str, dataset: str, store: str, cfg: PlanRequest | None = None,
                   force: bool = False, progress: bool = True,
                   storage_options: dict | None = None) -> PreprocessSummary:
    """Body of the flow (call inside a flow run so tasks are tracked)."""
    logger = get_run_logger()
    check_uris(input=input, store=store)
    cfg = cfg or PlanRequest()
    opts = storage_options if storage_options is not None else s3_options_from_env()
    check_store_root(store, opts)
    cases, problems, info = discover_task(input, opts)
    ignored = list(info.get("ignored", []))
    if not cases and not problems:
        found = f"; ignored {len(ignored)} other file(s): " + _first_few(ignored) if ignored else " (it is empty)"
        raise InputError(f"no CT volume (.nii, .nii.gz, .nrrd, .mha, .mhd) or DICOM series found in {input}{found}")
    ds = DatasetStore(store, dataset, opts, create=True)
    plan = choose_plan(ds, cases, cfg, opts)
    ds.ensure(plan.to_dict(), info.get("label_names", {}))
    summary = PreprocessSummary(dataset=dataset, store=store, plan=plan.to_dict(), ignored=ignored)
    summary.failed += [(f"(input) {p}", p, reason) for p, reason in problems]
    futures = {ingest_case_task.submit(c, store, dataset, plan, opts, force): c for c in cases}
    unreachable = _collect(futures, summary, progress)
    try:
        if unreachable:
            summary.manifest_error = f"given up ({unreachable})"
        else:
            summary.manifest_hash = consolidate_task(store, dataset, opts)
    except Exception as err:  # noqa: BLE001 - the records are the truth; the manifest is a cache
        if not is_transient(err):
            raise
        summary.manifest_error = failure_reason(err)
    for line in summary.lines():
        logger.info(line)
    publish_summary(summary)
    return summary


@flow(name="preprocess", log_prints=True, task_runner=dask_task_runner())
def preprocess_flow(input: str, dataset: str, store: str, target_spacing_mm: list[float] | Unset = None,
                    force: bool = False, config: str | Unset = None,
                    overrides: list[str] | Unset = None) -> dict:
    """Convert raw CT into a chunked Zarr dataset (one task per case, on Dask).

    The Dask cluster comes from the environment: PGL_DASK_ADDRESS joins an existing scheduler,
    otherwise a LocalCluster sized to the machine is started for the run.

    Args:
        input: Raw data: an MSD folder (imagesTr/labelsTr), a folder of volumes (NIfTI/NRRD/MHA) or a
            DICOM tree; a local path or an s3:// URI.
        dataset: Dataset name (the Zarr group under the store root).
        store: Store root: a local folder or s3://bucket/prefix.
        target_spacing_mm: Output spacing (x, y, z) in mm; empty = the dataset's median spacing.
        force: Redo cases even when their source and plan are unchanged.
        config: YAML config file whose `preprocess` section is used (chunks, shards, compression, what
            is refused; see deploy/configs/); empty = the defaults.
        overrides: Config overrides `preprocess.key=value`, e.g. ["preprocess.zstd_level=3"] (like --set).
    """
    cfg = resolve_config("paper", config, overrides).preprocess
    if target_spacing_mm:
        cfg.target_spacing_mm = tuple(target_spacing_mm)
    summary = run_preprocess(input, dataset, store, cfg, force=force, progress=_progress_enabled())
    return summary.to_dict()


def request_overrides(request: PlanRequest) -> list[str]:
    """The ``preprocess.key=value`` overrides that make the flow's config section ``request``."""
    return [f"preprocess.{key}={json.dumps(value)}" for key, value in request.model_dump(mode="json").items()]


def _progress_enabled() -> bool:
    return os.environ.get("PGL_PROGRESS", "1") != "0"


def preprocess(input: str, dataset: str, store: str, cfg: PlanRequest | None = None,
               force: bool = False, dask_address: str | None = None,
               n_workers: int | None = None) -> PreprocessSummary:
    """Run the preprocess flow (CLI and Python entry) with the chosen Dask cluster."""
    runner = dask_task_runner(dask_address, n_workers)
    out = preprocess_flow.with_options(task_runner=runner)(input, dataset, store, None, force, None,
                                                           request_overrides(cfg or PlanRequest()))
    return PreprocessSummary.from_dict(out)
