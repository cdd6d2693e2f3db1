"""A ``--force`` rewrite killed with SIGKILL at any point never leaves a case listed that does not
read: every listed case reads fully (image and label, the recorded shape, the same voxels), a short
training data pass over the store succeeds, and a rerun completes (and tidies) every case.

Count-based injection (``tests/store/crashpoints.py``): a forked child runs the forced rewrite of
the whole dataset (what ``pgl preprocess --force`` does per case, then the consolidation) and is
killed just before its N-th write to the store, for every N on a local folder and for a spread of
N on S3 (moto). ``tests/flows/test_kill_and_rerun.py`` kills the real CLI at random times.
"""

from __future__ import annotations

import multiprocessing as mp
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from phantoms import write_dataset
from storage.ingest import choose_plan, ingest_case
from storage.plan import PlanRequest
from storage.readers import discover_cases
from storage.store import DatasetStore
from storage.uri import open_fs
from tests.store.crashpoints import Countdown, install_local, install_s3
from tests.store.readback import arrays_of, check_readable, check_tidy

pytestmark = pytest.mark.slow

DATASET = "spleen"
N_CASES = 2
SPACING = (10.0, 10.0, 10.0)  # about 24 x 42 x 42 voxels: one chunk per array


@dataclass
class Target:
    """A store root on one backend."""

    kind: str
    root: str
    options: dict | None

    def store(self) -> DatasetStore:
        return DatasetStore(self.root, DATASET, self.options)

    def copy_to(self, root: str) -> "Target":
        if self.kind == "local":
            shutil.copytree(self.root, root)
        else:
            fs, src = open_fs(self.root, self.options)
            fs.copy(f"{src}/", f"{open_fs(root, self.options)[1]}/", recursive=True)
            fs.invalidate_cache()
        return Target(self.kind, root, self.options)


def preprocess(raw: str, target: Target, force: bool) -> list[str]:
    """Ingest every case of ``raw`` (force: even unchanged ones), then consolidate; statuses."""
    cases, problems, info = discover_cases(raw, target.options)
    assert not problems and len(cases) == N_CASES
    ds = DatasetStore(target.root, DATASET, target.options, create=True)
    plan = choose_plan(ds, cases, PlanRequest(target_spacing_mm=SPACING), target.options)
    ds.ensure(plan.to_dict(), info.get("label_names", {}))
    statuses = [ingest_case(c, target.root, DATASET, plan, target.options, force).status for c in cases]
    ds.consolidate_manifest()
    return statuses


def _rewrite_in_child(raw: str, target: Target, limit: int | None, count_file: str) -> None:
    countdown = Countdown(limit)
    if target.kind == "local":
        install_local(target.root, countdown.tick)
    else:
        install_s3(countdown.tick)
    preprocess(raw, target, force=True)
    Path(count_file).write_text(str(countdown.count))


def killed_rewrite(raw: str, target: Target, limit: int | None, tmp: Path) -> int:
    """Run the forced rewrite in a forked child killed before write ``limit`` (None: never);
    returns the number of writes it made when it was not killed, else -1."""
    count_file = tmp / f"count-{limit}"
    child = mp.get_context("fork").Process(target=_rewrite_in_child, args=(raw, target, limit, str(count_file)))
    child.start()
    child.join(timeout=300)
    if child.exitcode == -9:
        return -1
    assert child.exitcode == 0, f"rewrite child (limit {limit}) ended with exit code {child.exitcode}"
    return int(count_file.read_text())


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("raw")
    return write_dataset(str(root), "spleen", N_CASES, seed=5, shape_zyx=(20, 48, 48))["folders"]["nifti"]


def _crash_everywhere(raw: str, template: Target, make_root, limits_of, tmp: Path) -> int:
    preprocess(raw, template, force=False)
    pristine = arrays_of(template.store())
    digest = template.store().manifest_hash()
    assert len(pristine) == N_CASES
    whole = template.copy_to(make_root("whole"))
    total = killed_rewrite(raw, whole, None, tmp)
    assert total > 10
    check_readable(whole.store(), pristine)
    check_tidy(whole.store())
    assert whole.store().manifest_hash() == digest  # same sources, same plan: same hash
    kills = 0
    for limit in limits_of(total):
        target = template.copy_to(make_root(f"k{limit}"))
        kills += killed_rewrite(raw, target, limit, tmp) == -1
        check_readable(target.store(), pristine)  # a killed forced rewrite keeps every old case
        assert target.store().manifest_hash() == digest
        assert set(preprocess(raw, target, force=False)) <= {"skipped", "done"}
        check_readable(target.store(), pristine)
        check_tidy(target.store())
    assert kills == len(limits_of(total))
    return total


def test_forced_rewrite_killed_before_every_write_local(raw, tmp_path):
    template = Target("local", str(tmp_path / "template"), None)
    _crash_everywhere(raw, template, lambda name: str(tmp_path / name), lambda n: list(range(1, n + 1)), tmp_path)


@pytest.mark.s3
def test_forced_rewrite_killed_at_many_writes_s3(raw, tmp_path, s3_server, s3_bucket):
    template = Target("s3", f"{s3_bucket}/template", s3_server.storage_options)

    def spread(total: int) -> list[int]:
        return sorted({1, 2, total - 1, total, *range(3, total, max(1, total // 8))})
    _crash_everywhere(raw, template, lambda name: f"{s3_bucket}/{name}", spread, tmp_path)
