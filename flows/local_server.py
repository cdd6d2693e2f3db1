"""One Prefect server per Prefect home, shared by the commands run on this machine.

Without ``PREFECT_API_URL`` every command would start Prefect's ephemeral API: import the server
in-process and start it in a subprocess, 5-10 s before the first case of a ``pgl preprocess``. The
first command instead starts a small supervisor (``python -m flows.local_server``) that runs
``prefect server start`` on 127.0.0.1 with the same database (``$PREFECT_HOME/prefect.db``); later
commands find it through ``$PREFECT_HOME/local-server.json`` and use it at once (one health check).
Every command marks the server used; the supervisor stops it after ``PGL_LOCAL_SERVER_IDLE_MIN``
minutes (default 30) without use. Its UI shows the CLI's runs (the command prints the address when
it starts one). ``PGL_LOCAL_SERVER=0`` keeps the ephemeral API (one per command, nothing left
running).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STATE_FILE = "local-server.json"
USED_FILE = "local-server.used"
LOCK_FILE = "local-server.lock"
LOG_FILE = "local-server.log"
START_TIMEOUT_S = 120.0
CHECK_EVERY_S = 15.0


def enabled() -> bool:
    """True unless ``PGL_LOCAL_SERVER=0`` or a Prefect API is configured already."""
    return os.environ.get("PGL_LOCAL_SERVER", "1") != "0" and not os.environ.get("PREFECT_API_URL")


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").resolve()


def healthy(api: str, timeout_s: float = 2.0) -> bool:
    from flows.serve import health_problem

    return health_problem(api, timeout_s) is None


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _running(home: Path) -> str | None:
    try:
        state = json.loads((home / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state["api"] if healthy(state["api"]) else None


def mark_used(home: Path) -> None:
    (home / USED_FILE).touch()


def ensure(home: Path | None = None) -> tuple[str, bool]:
    """The API URL of this home's server, starting it when none runs; ``(api, started_now)``."""
    home = home or prefect_home()
    with _locked(home):
        api = _running(home)
        if api:
            mark_used(home)
            return api, False
        (home / STATE_FILE).unlink(missing_ok=True)
        mark_used(home)
        idle = str(idle_minutes())
        with open(home / LOG_FILE, "ab") as log:
            subprocess.Popen([sys.executable, "-m", "flows.local_server", "--home", str(home), "--idle-min", idle],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                             env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            api = _running(home)
            if api:
                return api, True
            time.sleep(0.25)
    raise TimeoutError(f"the local Prefect server under {home} did not start within {START_TIMEOUT_S:.0f} s; "
                       f"see {home / LOG_FILE} (PGL_LOCAL_SERVER=0 runs without it)")


def supervise(home: Path, idle_min: float) -> int:
    """Run the server until it has been unused for ``idle_min`` minutes (or SIGTERM)."""
    from flows.launch import free_port
    from flows.serve import start_local_server, stop_process

    proc, api = start_local_server(home, port=free_port("127.0.0.1"), log_file=home / LOG_FILE)
    state = home / STATE_FILE
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"api": api, "pid": proc.pid, "supervisor": os.getpid(), "started": time.time()}))
    tmp.replace(state)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    try:
        while not stopping and proc.poll() is None:
            time.sleep(min(CHECK_EVERY_S, idle_min * 60))
            with _locked(home):  # a command marks it used under the same lock: no stop under its feet
                used = (home / USED_FILE).stat().st_mtime if (home / USED_FILE).exists() else 0.0
                if time.time() - used > idle_min * 60:
                    state.unlink(missing_ok=True)
                    break
    finally:
        with _locked(home):
            if state.exists() and json.loads(state.read_text()).get("supervisor") == os.getpid():
                state.unlink()
        stop_process(proc)
    return 0


def idle_minutes() -> float:
    return float(os.environ.get("PGL_LOCAL_SERVER_IDLE_MIN", "30"))


def keep_alive(home: Path) -> None:
    """Mark the server used while this process runs (a daemon thread, well within the idle time)
    and once more when it exits, so that the idle time counts from the last command's end."""
    import atexit
    import threading

    every_s = max(1.0, min(60.0, idle_minutes() * 60 / 4))
    atexit.register(lambda: mark_used(home) if (home / STATE_FILE).exists() else None)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            try:
                mark_used(home)
            except OSError:
                pass

    threading.Thread(target=loop, name="pgl-local-server-keepalive", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the shared local Prefect server of a Prefect home until idle.")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--idle-min", type=float, default=30.0)
    args = parser.parse_args(argv)
    return supervise(args.home.resolve(), args.idle_min)


if __name__ == "__main__":
    sys.exit(main())
