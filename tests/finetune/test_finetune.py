"""The fine-tuning loop on the tiny preset: learning, the model directory, best-on-validation,
SIGTERM, and resume continuity."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import torch

from pgl_core import checkpoint as ckpt
from pgl_core.contracts import load_segmenter
from pgl_core.finetune import run_finetuning
from pgl_core.sinks import NullSink, read_jsonl
from storage.store import DatasetStore
from tests.finetune.conftest import SMALL_PATCH, tiny_cfg


def test_finetuning_learns_and_writes_the_model_directory(trained, kits_store):
    res = trained
    assert res.status == "completed" and res.steps == 12
    losses = [h["loss"] for h in res.history]
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3
    assert [v["step"] for v in res.val_history] == [4.0, 8.0, 12.0]
    assert res.best_val_dice == max(v["val_dice"] for v in res.val_history)
    assert res.final_val_dice == res.val_history[-1]["val_dice"]
    run_dir = Path(res.model_dir).parent
    contract = json.loads((Path(res.model_dir) / "contract.json").read_text())
    assert contract["kind"] == "pgl-segmenter" and contract["predictor"] == "pgl_core.predict:predict_file"
    assert contract["label_names"] == {"0": "background", "1": "kidney", "2": "kidney_tumour"}
    assert contract["architecture"]["num_classes"] == 3 and contract["in_channels"] == 1
    assert contract["spacing_mm"] == [8.0, 8.0, 10.0] and contract["orientation"] == "LPS"
    assert contract["init"] == "random" and contract["pretrain_mode"] is None
    assert contract["lineage"]["manifest_hash"] == DatasetStore(kits_store, "kits").manifest_hash()
    assert contract["metrics"]["best_step"] == res.best_step
    split = json.loads((Path(res.model_dir) / "split.json").read_text())
    assert split == json.loads((run_dir / "split.json").read_text()) == contract["split"]
    assert len(split["train"]) == 3 and len(split["val"]) == 1 and len(split["test"]) == 1
    model, _ = load_segmenter(res.model_dir)
    state, _ = ckpt.load_latest(str(run_dir))
    best_state = state["best"]["state"]
    assert all(torch.equal(model.state_dict()[k], best_state[k]) for k in best_state)
    assert any(r["kind"] == "metrics" and "val_dice" in r for r in read_jsonl(run_dir / "metrics.jsonl"))


class _KillAt(NullSink):
    """Sends this process SIGTERM when step ``at`` is logged."""

    def __init__(self, at: int) -> None:
        self.at = at

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def _final_state(out: str) -> dict:
    return ckpt.load_latest(out)[0]


def test_killed_then_resumed_equals_uninterrupted(kits_store, tmp_path):
    cfg = tiny_cfg(*SMALL_PATCH, "finetune.steps=6", "finetune.eval_every=3")
    straight = run_finetuning(cfg, kits_store, "kits", "random", str(tmp_path / "a"), sink=NullSink(), labelled=2)
    out = str(tmp_path / "b")
    first = run_finetuning(cfg, kits_store, "kits", "random", out, sink=_KillAt(2), labelled=2)
    assert first.status == "preempted" and first.steps == 3
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [3] and not Path(out, "model").exists()
    second = run_finetuning(cfg, kits_store, "kits", "random", out, sink=NullSink(), labelled=2)
    assert second.status == "completed" and second.steps == 6
    a, b = _final_state(str(tmp_path / "a")), _final_state(out)
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6, rtol=0), key
    assert math.isclose(straight.best_val_dice, second.best_val_dice, abs_tol=1e-6)
    assert [h["loss"] for h in straight.history[3:]] == [h["loss"] for h in second.history]
    assert torch.equal(torch.load(Path(out, "model", "model.pt"), weights_only=True)["seg_head.weight"],
                       torch.load(tmp_path / "a" / "model" / "model.pt", weights_only=True)["seg_head.weight"])


def test_stop_at_max_steps_then_finish(kits_store, tmp_path):
    cfg = tiny_cfg(*SMALL_PATCH, "finetune.steps=3", "finetune.eval_every=10")
    out = str(tmp_path / "c")
    assert run_finetuning(cfg, kits_store, "kits", "random", out, sink=NullSink(), max_steps=2).status == "stopped"
    res = run_finetuning(cfg, kits_store, "kits", "random", out, sink=NullSink())
    assert res.status == "completed" and res.steps == 3 and Path(res.model_dir, "model.pt").is_file()
    assert len(res.val_history) == 1  # the final step always validates
