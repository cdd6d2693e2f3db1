"""``pgl replay-metrics`` on the embedded store: rows the run lacks are logged with their step and
time, rows it has are not, a second replay logs nothing; the run is found from the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main


def _rows(path: Path, steps: range) -> None:
    with path.open("w") as fh:
        fh.write(json.dumps({"kind": "params", "train.steps": len(steps)}) + "\n")
        for step in steps:
            fh.write(json.dumps({"kind": "metrics", "step": step, "time": 1.7e9 + step, "loss": 1.0 / step}) + "\n")
            if step % 2 == 0:  # a second row at the same step, as validation rows are
                fh.write(json.dumps({"kind": "metrics", "step": step, "time": 1.7e9 + step, "val": float(step)}) + "\n")


def test_replay_fills_the_recorded_runs_history_once(tmp_path: Path, monkeypatch, capsys):
    from flows.tracking import mlflow_run as tracking
    from flows.tracking.replay import ReplayError, record_run, replay_metrics

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    sink = tracking.start_run(work, "pretrain")
    for step in (1, 2):  # what live forwarding got through before the server went away
        sink.log_metrics(step, {"loss": 1.0 / step})
    record_run(sink, str(out), "pretrain")
    _rows(out / "metrics.jsonl", range(1, 7))
    assert main(["replay-metrics", "--output", str(out), "--workdir", str(work)]) == 0
    said = capsys.readouterr().out
    assert f"-> run {sink.run_id} on sqlite:" in said and "7 value(s) logged, 2 already there (9 rows, 2 keys)" in said
    client = sink._link.client
    loss = client.get_metric_history(sink.run_id, "loss")
    assert sorted(m.step for m in loss) == [1, 2, 3, 4, 5, 6]
    assert {m.step: m.timestamp for m in loss}[5] == int((1.7e9 + 5) * 1000)
    assert sorted(m.step for m in client.get_metric_history(sink.run_id, "val")) == [2, 4, 6]
    again = replay_metrics(str(out), workdir=str(work))
    assert (again.logged, again.present) == (0, 9)

    other = replay_metrics(str(out), new_run=True, workdir=str(work))
    assert other.run_id != sink.run_id and other.logged == 9
    assert client.get_run(other.run_id).data.tags["pgl.stage"] == "pretrain"

    (out / "mlflow-run.json").unlink()
    with pytest.raises(ReplayError, match="--run-id RUN or --new-run"):
        replay_metrics(str(out), workdir=str(work))
    assert main(["replay-metrics", "--output", str(tmp_path / "nothing"), "--workdir", str(work)]) == 2
    assert "no metrics rows in" in capsys.readouterr().err
