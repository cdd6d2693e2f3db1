"""Sliding-window prediction: exact against computable outputs, slabbing-invariant, MONAI-equal."""

from __future__ import annotations

import pytest
import torch

from pgl_core.evaluation.sliding_window import (
    importance_map,
    slab_rows_for_budget,
    sliding_window_predict,
    window_starts,
)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed torch; one intra-op thread (small convs on a shared 2-core box thrash with more)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_net(c_in: int, classes: int, kernel: int) -> torch.nn.Module:
    """A fixed random conv (kernel 1 = pointwise: prediction independent of window placement)."""
    net = torch.nn.Conv3d(c_in, classes, kernel, padding=kernel // 2)
    return net.eval()


def monai_labels(volume, net, patch, overlap=0.5, mode="gaussian") -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        probs = sliding_window_inference(
            volume, patch, 2, lambda x: torch.softmax(net(x), 1), overlap=overlap, mode=mode
        )
    return probs.argmax(1)[0].to(torch.uint8)


def test_pointwise_network_gives_the_whole_volume_argmax():
    net = conv_net(2, 5, 1)
    volume = torch.randn(1, 2, 41, 30, 27)
    with torch.inference_mode():
        expected = net(volume).argmax(1)[0].to(torch.uint8)
    out = sliding_window_predict(volume, net, (16, 16, 16), 5, max_prob_bytes=None)
    assert out.dtype == torch.uint8 and out.shape == (41, 30, 27)
    assert torch.equal(out, expected)
    slabbed = sliding_window_predict(volume, net, (16, 16, 16), 5, max_prob_bytes=1)
    assert torch.equal(slabbed, expected)


@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_budget_forcing_slabs_equals_unslabbed_and_monai(overlap):
    net = conv_net(1, 4, 3)  # 3x3x3: output depends on where the window sits
    volume = torch.randn(1, 1, 53, 24, 20)
    patch = (12, 16, 16)
    budget = 4 * 24 * 20 * 4 * 15  # 15 rows of 4-class float32 probabilities
    assert slab_rows_for_budget(4, (53, 24, 20), patch[0], budget) == 15 < 53
    full = sliding_window_predict(volume, net, patch, 4, overlap=overlap, max_prob_bytes=None)
    slabbed = sliding_window_predict(volume, net, patch, 4, overlap=overlap, max_prob_bytes=budget)
    tightest = sliding_window_predict(volume, net, patch, 4, overlap=overlap, max_prob_bytes=1, sw_batch_size=3)
    assert torch.equal(full, slabbed) and torch.equal(full, tightest)
    assert torch.equal(full, monai_labels(volume, net, patch, overlap))
    assert len(torch.unique(full)) > 1


def test_constant_mode_matches_monai():
    net = conv_net(1, 3, 3)
    volume = torch.randn(1, 1, 30, 22, 22)
    out = sliding_window_predict(volume, net, (10, 12, 12), 3, mode="constant", max_prob_bytes=1)
    assert torch.equal(out, monai_labels(volume, net, (10, 12, 12), mode="constant"))


def test_input_smaller_than_patch_is_padded_and_cropped_back():
    net = conv_net(1, 3, 3)
    volume = torch.randn(1, 1, 5, 40, 7)
    out = sliding_window_predict(volume, net, (16, 16, 16), 3)
    assert out.shape == (5, 40, 7)
    assert torch.equal(out, monai_labels(volume, net, (16, 16, 16)))


@pytest.mark.parametrize("size,patch,overlap", [(37, 16, 0.5), (16, 16, 0.5), (100, 32, 0.25), (33, 32, 0.9)])
def test_window_starts_match_monai(size, patch, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval((size,), (patch,), 1, (overlap,))
    expected = [s[0].start for s in dense_patch_slices((size,), (patch,), interval)]
    assert window_starts(size, patch, overlap) == expected


@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 20, 33), (1, 8, 8)])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_importance_map_equals_monai(patch, mode):
    from monai.data.utils import compute_importance_map

    expected = compute_importance_map(patch, mode=mode, device="cpu")
    assert torch.equal(importance_map(patch, mode, torch.device("cpu")), expected.float())


def test_budget_bound_for_a_512x512x300_ct_with_9_classes():
    rows = slab_rows_for_budget(9, (300, 512, 512), 64, 1 << 30)
    assert 64 <= rows < 300
    assert 9 * rows * 512 * 512 * 4 <= 1 << 30
    assert slab_rows_for_budget(9, (300, 512, 512), 64, 1) == 64  # never below one patch depth
    assert slab_rows_for_budget(9, (300, 512, 512), 64, None) == 300


def test_wrong_network_output_and_bad_volume_are_refused():
    with pytest.raises(ValueError, match=r"expected \(B, 4"):
        sliding_window_predict(torch.randn(1, 1, 16, 16, 16), conv_net(1, 3, 1), (8, 8, 8), 4)
    with pytest.raises(ValueError, match=r"\(1, 16, 16, 16\)"):
        sliding_window_predict(torch.randn(1, 16, 16, 16), conv_net(1, 3, 1), (8, 8, 8), 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_agrees_with_cpu_and_respects_the_budget():
    net = conv_net(1, 9, 3)
    volume = torch.randn(1, 1, 96, 128, 128)
    patch = (32, 64, 64)
    cpu = sliding_window_predict(volume, net, patch, 9, max_prob_bytes=None)
    budget = 9 * 40 * 128 * 128 * 4
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    gpu = sliding_window_predict(volume, net.cuda(), patch, 9, device="cuda", out_device="cuda",
                                 max_prob_bytes=budget, bf16=True)
    peak = torch.cuda.max_memory_allocated() - base
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    assert (gpu.cpu() == cpu).float().mean().item() > 0.97  # bf16 flips only near-ties
    assert peak < budget + 96 * 128 * 128 + 64 * 2**20  # slab + labels + windows / workspace


def test_class_argmax_equals_torch_argmax_with_ties():
    from pgl_core.evaluation.sliding_window import argmax_classes

    probs = torch.randint(0, 3, (5, 7, 9, 11)).float()  # many ties: the first class wins, as argmax
    assert torch.equal(argmax_classes(probs), probs.argmax(0).to(torch.uint8))
    assert torch.equal(argmax_classes(probs[:1]), torch.zeros((7, 9, 11), dtype=torch.uint8))


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_single_window_batches_on_cpu_equal_monai(batch):
    """Rows of 3 x 3 windows leave a batch of one (run as two copies on a CPU): same labels as MONAI."""
    net = conv_net(1, 4, 3)
    volume = torch.randn(1, 1, 30, 28, 28)
    patch = (12, 16, 16)
    out = sliding_window_predict(volume, net, patch, 4, sw_batch_size=batch, max_prob_bytes=1)
    assert torch.equal(out, monai_labels(volume, net, patch))


def test_unet_with_instance_norm_through_predict_equals_monai():
    """pgl predict's sliding window (segment_tensor) on the tiny U-Net equals MONAI's Gaussian blend
    of the softmax, whatever the batch size (instance norm is per window)."""
    from monai.inferers import sliding_window_inference

    from pgl_core.config import config_to_dict, load_config
    from pgl_core.contracts import SegmenterContract
    from pgl_core.intensity_norm import IntensityNorm
    from pgl_core.nets.unet import SegmentationUNet
    from pgl_core.predict import segment_tensor

    cfg = load_config(preset="tiny", overrides=["finetune.patch_vox=[8,16,16]", "finetune.sw_overlap=0.5"])
    net = SegmentationUNet(cfg.model, 3).eval()
    norm = IntensityNorm((-1000.0, 1000.0), "zscore", 0.0, 500.0)
    contract = SegmenterContract.build(config_to_dict(cfg), 3, {0: "bg", 1: "a", 2: "b"}, [1.0, 1.0, 1.0], norm,
                                       "random", None, "d", "h", {}, {})
    x = torch.randn(21, 37, 30)
    with torch.inference_mode():
        expected = sliding_window_inference(x[None, None], (8, 16, 16), 2, lambda w: torch.softmax(net(w), 1),
                                            overlap=0.5, mode="gaussian").argmax(1)[0].to(torch.uint8)
    for batch in (1, 2, 5):
        assert torch.equal(segment_tensor(net, contract, x, torch.device("cpu"), batch), expected)
    assert len(torch.unique(expected)) > 1
