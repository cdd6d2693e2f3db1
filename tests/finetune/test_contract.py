"""The pretraining -> fine-tuning contract: mismatches stop the run naming the field, weights load
completely or not at all, and a pretrained init really changes the starting weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pgl_core.adapt import load_encoder_into
from pgl_core.contracts import ENCODER_FILE, ContractMismatch, PretrainContract, SegmenterContract
from pgl_core.finetune import build_model, main, prepare_run
from pgl_core.loop import EXIT_USAGE
from pgl_core.nets.unet import SegmentationUNet
from storage.store import DatasetStore
from tests.finetune.conftest import make_store, tiny_cfg, write_pretrain_output


@pytest.fixture(scope="module")
def pretrained(kits_store, tmp_path_factory) -> str:
    return write_pretrain_output(str(tmp_path_factory.mktemp("pre") / "run"), kits_store, "kits")


def _store(root: str) -> DatasetStore:
    return DatasetStore(root, "kits")


def test_pretrained_encoder_loads_completely_and_changes_init(kits_store, pretrained):
    cfg = tiny_cfg()
    run = prepare_run(cfg, _store(kits_store), "kits", pretrained, None, None)
    model, left = build_model(cfg, run, None)
    random_model, _ = build_model(cfg, prepare_run(cfg, _store(kits_store), "kits", "random", None, None), None)
    assert not [k for k in left if k.startswith("encoder.")]
    assert left and all(k.startswith(("seg_head.", "decoder.")) for k in left)  # bottleneck-only pretraining
    enc = torch.load(f"{pretrained}/{ENCODER_FILE}", weights_only=True)
    own, rnd = model.state_dict(), random_model.state_dict()
    for key, value in enc.items():
        assert torch.equal(own[key], value)
    changed = [k for k in enc if k.endswith("weight") and not torch.equal(own[k], rnd[k])]
    assert len(changed) >= 10
    assert run.norm.mean_hu == PretrainContract.read(pretrained).normalisation["mean_hu"]


def test_spacing_mismatch_names_field_values_and_fix(tmp_path, pretrained):
    root = make_store(str(tmp_path / "store"), "kits", n_cases=3, spacing_mm=(7.0, 7.0, 10.0))
    with pytest.raises(ContractMismatch) as err:
        prepare_run(tiny_cfg(), _store(root), "kits", pretrained, None, None)
    text = str(err.value)
    assert "spacing_mm" in text and "[8.0, 8.0, 10.0]" in text and "[7.0, 7.0, 10.0]" in text
    assert "--target-spacing 8,8,10" in text


@pytest.fixture(scope="module")
def pretrained_zscore(kits_store, tmp_path_factory) -> str:
    return write_pretrain_output(str(tmp_path_factory.mktemp("prez") / "run"), kits_store, "kits",
                                 cfg=tiny_cfg("intensity.normalisation=zscore", "intensity.hu_window=[-1024,325]"))


def test_hu_window_normalisation_and_architecture_mismatches(kits_store, pretrained, pretrained_zscore):
    cfg = tiny_cfg("intensity.hu_window=[-200,300]", "intensity.normalisation=minmax", "model.norm=group")
    with pytest.raises(ContractMismatch) as err:
        prepare_run(cfg, _store(kits_store), "kits", pretrained_zscore, None, None)
    fields = [p[0] for p in err.value.problems]
    assert fields == ["model.norm", "intensity.hu_window", "intensity.normalisation"]
    assert "--set intensity.hu_window=[-1024.0,325.0]" in str(err.value)
    assert "--set model.norm=\"instance\"" in str(err.value)
    # a foreground norm takes its clip range from the pretraining data: only the kind must match
    fg = write_pretrain_output(str(Path(pretrained).parent / "fg"), kits_store, "kits",
                               cfg=tiny_cfg("intensity.normalisation=foreground"))
    with pytest.raises(ContractMismatch) as err:
        prepare_run(tiny_cfg("intensity.hu_window=[-200,300]", "intensity.normalisation=zscore"),
                    _store(kits_store), "kits", fg, None, None)
    assert [p[0] for p in err.value.problems] == ["intensity.normalisation"]
    prepare_run(tiny_cfg("intensity.hu_window=[-200,300]", "intensity.normalisation=foreground"),
                _store(kits_store), "kits", fg, None, None)


def test_missing_and_unexpected_keys_are_listed(pretrained):
    pre = PretrainContract.read(pretrained)
    enc = torch.load(f"{pretrained}/{ENCODER_FILE}", weights_only=True)
    model = SegmentationUNet(tiny_cfg().model, 3)
    partial = {k: v for k, v in enc.items() if k != "encoder.stages.1.0.0.weight"}
    with pytest.raises(ContractMismatch, match=r"missing keys.*encoder\.stages\.1\.0\.0\.weight"):
        load_encoder_into(model, partial, pre, "init x")
    extra = {**enc, "online.global_proj.net.0.weight": torch.zeros(2, 2)}
    with pytest.raises(ContractMismatch, match=r"unexpected keys.*online\.global_proj"):
        load_encoder_into(model, extra, pre, "init x")
    shaped = {**enc, "encoder.stages.0.0.0.weight": torch.zeros(1, 1, 3, 3, 3)}
    with pytest.raises(ContractMismatch, match="shape mismatches"):
        load_encoder_into(model, shaped, pre, "init x")


def test_decoder_levels_the_contract_says_were_pretrained_must_be_present(kits_store, tmp_path):
    cfg = tiny_cfg("loss.local_levels=[bottleneck,decoder_s4]")
    out = write_pretrain_output(str(tmp_path / "pre_dec"), kits_store, "kits", cfg)
    enc = torch.load(f"{out}/{ENCODER_FILE}", weights_only=True)
    assert any(k.startswith("decoder.") for k in enc)
    model = SegmentationUNet(cfg.model, 3)
    left = load_encoder_into(model, enc, PretrainContract.read(out), "init y")
    assert all(k.startswith("seg_head.") or int(k.split(".")[2]) >= 1 for k in left)
    no_decoder = {k: v for k, v in enc.items() if not k.startswith("decoder.")}
    with pytest.raises(ContractMismatch, match=r"missing keys.*decoder\.blocks\.0"):
        load_encoder_into(SegmentationUNet(cfg.model, 3), no_decoder, PretrainContract.read(out), "init y")


def test_cli_exits_2_on_contract_mismatch(kits_store, pretrained_zscore, tmp_path, capsys):
    code = main(["--store", kits_store, "--dataset", "kits", "--init", pretrained_zscore, "--output",
                 str(tmp_path / "ft"), "--preset", "tiny", "--set", "intensity.hu_window=[-100,200]",
                 "--set", "intensity.normalisation=zscore"])
    assert code == EXIT_USAGE
    assert "intensity.hu_window" in capsys.readouterr().err
    assert not (tmp_path / "ft" / "checkpoints").exists()


def test_segmenter_contract_checked_against_dataset_plan():
    contract = SegmenterContract(architecture={"num_classes": 2}, in_channels=1, label_names={"1": "a"},
                                 spacing_mm=[8.0, 8.0, 10.0], orientation="LPS", hu_window=[-1024.0, 325.0],
                                 normalisation={"kind": "minmax"}, patch_vox=[8, 16, 16])
    contract.check_plan({"plan": {"target_spacing_mm": [8.004, 8.0, 10.0]}}, "d")
    with pytest.raises(ContractMismatch, match="spacing_mm"):
        contract.check_plan({"plan": {"target_spacing_mm": [8.1, 8.0, 10.0]}}, "d")


def test_contract_reads_name_the_file_and_the_field(tmp_path, pretrained):
    raw = json.loads((Path(pretrained) / "contract.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "contract.json").write_text(json.dumps({**raw, "patch_vox": [8, 16]}))
    with pytest.raises(ValueError, match=r"bad/contract\.json: field 'patch_vox' must be 3 integers"):
        PretrainContract.read(str(bad))
    (bad / "contract.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "steps"}))
    with pytest.raises(ValueError, match=r"bad/contract\.json: contract lacks fields \['steps'\]"):
        PretrainContract.read(str(bad))
    with pytest.raises(ValueError, match="kind 'pgl-encoder' is not 'pgl-segmenter'"):
        SegmenterContract.read(pretrained)
    with pytest.raises(FileNotFoundError, match="none has no contract.json"):
        SegmenterContract.read(str(tmp_path / "none"))
    pre = PretrainContract.read(pretrained)
    assert pre.source.endswith("contract.json") and pre.to_dict() == raw
    assert pre.norm_from().to_dict() == {"hu_window": raw["hu_window"], **raw["normalisation"]}
