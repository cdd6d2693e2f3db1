"""Pretraining with train.probe_dataset logs the linear probe through the metrics sink."""
def test_pretraining_logs_the_linear_probe_on_a_named_dataset(kits_store, tmp_path):
    from pgl_core.config import load_config
    from pgl_core.pretrain import run_pretraining

    cfg = load_config(preset="tiny", overrides=["views.patch_vox=[8,16,16]", "train.steps=2", "train.batch_size=2",
                                                "train.probe_every=2", "train.probe_dataset=kits"])
    res = run_pretraining(cfg, kits_store, ["kits"], str(tmp_path / "run"))
    assert [h["step"] for h in res.probe_history] == [0.0, 2.0]
    assert all(0.0 <= h["probe_linear_dice"] <= 1.0 for h in res.probe_history)
