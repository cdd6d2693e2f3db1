"""Fixed cost of ``pgl preprocess``: the whole command on a dataset whose cases are all unchanged
(each is a skip, a few milliseconds), so its wall time is what a run pays before and around its
cases. Baseline: Prefect's per-command ephemeral API (``PGL_LOCAL_SERVER=0``); against: the
machine's shared local server (:mod:`flows.local_server`), warmed by one run first. Runs are
interleaved; prints median and min of each and their ratio.

    python benchmarks/startup.py              # 2 tiny phantom cases, 5 rounds
    python benchmarks/startup.py --rounds 9
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(env: dict[str, str], args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, check=True, cwd=str(REPO),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgl-startup-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(root / "prefect"), "PGL_PROGRESS": "0",
               "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PGL_LOCAL_SERVER_IDLE_MIN": "5"}
        env.pop("PREFECT_API_URL", None)
        subprocess.run([sys.executable, "-m", "flows.cli", "phantoms", "--out", str(root / "raw"), "--kinds", "spleen",
                        "--cases", "2", "--shape", "32,64,64"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        args = ["preprocess", "--input", str(root / "raw" / "PhantomSpleen"), "--dataset", "s", "--store",
                str(root / "store")]
        first = run({**env, "PGL_LOCAL_SERVER": "1"}, args)  # converts the cases, starts the local server
        print(f"first run (converts 2 cases, starts the shared server on a fresh home): {first:.1f} s")
        times: dict[str, list[float]] = {"ephemeral": [], "shared": []}
        for _ in range(opts.rounds):
            times["ephemeral"].append(run({**env, "PGL_LOCAL_SERVER": "0"}, args))
            times["shared"].append(run({**env, "PGL_LOCAL_SERVER": "1"}, args))
        for name, values in times.items():
            print(f"{name:>9}: median {statistics.median(values):.2f} s, min {min(values):.2f} s "
                  f"({len(values)} runs, all cases unchanged)")
        ratio = statistics.median(times["shared"]) / statistics.median(times["ephemeral"])
        print(f"shared / ephemeral (median): {ratio:.2f}")
        state = json.loads((root / "prefect" / "local-server.json").read_text())
        os.kill(state["supervisor"], signal.SIGTERM)  # stops its server; nothing outlives the benchmark


if __name__ == "__main__":
    main()
