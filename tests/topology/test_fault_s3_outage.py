"""The object store goes away in the middle of an ingest (``pgl preprocess`` to ``s3://``, through a
TCP proxy in front of the local moto server that the test cuts and restores).

- Briefly (a few seconds, every connection reset): the run still completes with every case done
  (botocore's own retries, then Prefect's task retries of transient errors), and a rerun has
  nothing to do.
- For good (connections refused): the run ends with exit 1 in bounded time after one case's retry
  budget; every case not done is reported on one line naming the endpoint that did not answer (no
  credential); what the store lists as done reads back completely.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from phantoms import write_dataset
from storage.store import DatasetStore
from tests.store.readback import check_tidy, training_pass
from tests.topology.proxy import TcpProxy

pytestmark = [pytest.mark.topology, pytest.mark.s3]

CASES = 5
SECRET = "PLANTEDs3SECRETx9x8x7"  # moto takes any key; it must never be printed
# from the outage to the exit: one case's retry budget (3 attempts of at most 15 s of botocore
# retries each, 2 s + 10 s between them: at most 57 s) and the shutdown; measured 60-75 s
GIVE_UP_S = 90.0


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    write_dataset(str(tmp_path / "raw"), "pool", CASES, seed=3, shape_zyx=(24, 64, 64), formats=("nifti",))
    return tmp_path / "raw" / "PhantomPool"


@pytest.fixture
def proxy(s3_server):
    with TcpProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])) as p:
        yield p


class Ingest:
    """``pgl preprocess`` of ``raw`` into ``<bucket>/store``, with S3 reached through ``proxy``."""

    def __init__(self, tmp_path: Path, raw: Path, s3_server, proxy: TcpProxy, workers: int) -> None:
        self.bucket = s3_server.make_bucket("pgl-outage")
        self.store_uri = f"{self.bucket}/store"
        self.direct = s3_server.storage_options  # straight to moto, around the proxy
        self.env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT_URL_S3": proxy.url,
                    "AWS_SECRET_ACCESS_KEY": SECRET, "PGL_PROGRESS": "0", "PREFECT_HOME": str(tmp_path / "prefect"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                os.environ.get("PYTHONPATH")]))}
        self.env.pop("PREFECT_API_URL", None)
        self.cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--input", str(raw), "--dataset", "pool",
                    "--store", self.store_uri, "--target-spacing", "1.5,1.5,2", "--workers", str(workers)]
        self._client = s3_server.client()

    def records(self) -> list[str]:
        """The case records in the store (listed directly, not through the proxy)."""
        found = self._client.list_objects_v2(Bucket=self.bucket.removeprefix("s3://"), Prefix="store/pool/_cases/")
        return [o["Key"] for o in found.get("Contents", [])]

    def start(self) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        return proc, lines

    def until_first_record(self, proc: subprocess.Popen, lines: list[str], timeout_s: float = 150) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.records():
            assert proc.poll() is None, "preprocess ended before the outage:\n" + "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no case record in time"
            time.sleep(0.05)

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd, env=self.env, capture_output=True, text=True, timeout=240)

    def dataset(self) -> DatasetStore:
        return DatasetStore(self.store_uri, "pool", self.direct)


def _wait(proc: subprocess.Popen, lines: list[str], timeout_s: float) -> str:
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    time.sleep(0.2)  # the reader thread drains the pipe
    return "".join(lines)


@pytest.mark.timeout(300)
def test_a_brief_outage_is_retried_and_the_run_completes(tmp_path, raw, s3_server, proxy):
    ingest = Ingest(tmp_path, raw, s3_server, proxy, workers=2)
    proc, lines = ingest.start()
    ingest.until_first_record(proc, lines)
    proxy.pause("reset")  # open connections reset, new ones reset on arrival
    time.sleep(5.0)
    proxy.resume()
    out = _wait(proc, lines, 180)
    assert proc.returncode == 0, out[-3000:]
    assert proxy.dropped > 0, "no request hit the outage: nothing was retried"
    assert f"{CASES} done, 0 skipped (unchanged), 0 failed" in out, out[-3000:]
    assert len(ingest.dataset().done_cases()) == CASES
    rerun = ingest.run()
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert f"0 done, {CASES} skipped (unchanged), 0 failed" in rerun.stdout
    check_tidy(ingest.dataset())


@pytest.mark.timeout(400)
def test_an_outage_for_good_fails_clearly_in_bounded_time(tmp_path, raw, s3_server, proxy):
    ingest = Ingest(tmp_path, raw, s3_server, proxy, workers=1)
    proc, lines = ingest.start()
    ingest.until_first_record(proc, lines)
    proxy.pause("refuse")
    cut_at = time.monotonic()
    out = _wait(proc, lines, 180)
    elapsed = time.monotonic() - cut_at
    print(f"exit {proc.returncode} {elapsed:.1f} s after the outage began")
    assert proc.returncode == 1, out[-3000:]
    assert elapsed < GIVE_UP_S, f"gave up {elapsed:.0f} s after the outage began"
    assert SECRET not in out and "Traceback" not in out, out[-3000:]

    summary = next(line for line in out.splitlines() if line.startswith("dataset pool in "))
    done_n = int(summary.split(": ", 1)[1].split(" done")[0])
    assert 1 <= done_n < CASES and f"{CASES - done_n} failed" in summary, summary
    failed = [line for line in out.splitlines() if line.startswith("  FAILED ")]
    assert len(failed) == CASES - done_n, out[-3000:]
    for line in failed:  # one line each: what did not answer, where
        assert "storage unreachable after 3 attempts" in line and proxy.url.removeprefix("http://") in line, line
        assert "EndpointConnectionError" in line, line
    assert any("manifest not updated" in line for line in out.splitlines()), out[-3000:]

    # nothing half-written is listed as done: each case the records call done reads back whole
    proxy.resume()
    ds = ingest.dataset()
    done = ds.done_cases()
    assert len(done) == done_n and not any(f"FAILED {case}:" in line for case in done for line in failed)
    cases = ds.manifest()["cases"]
    for case in done:
        assert list(ds.read_full(case).shape) == cases[case]["shape_zyx"], case
    training_pass(ds)
    check_tidy(ds)
