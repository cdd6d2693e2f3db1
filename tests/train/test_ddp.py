"""Two-process DDP on CPU (gloo, loopback rendezvous): gradients equal the single-process run on the
same global batch, and the pretraining loop ends with identical weights on both ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from pgl_core import checkpoint as ckpt
from pgl_core.views import ViewParams, sample_views
from tests.train.standins import TinyPGL, mem_stores, standin_components, tiny_config

pytestmark = pytest.mark.ddp
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(n: int = 4):
    cfg = tiny_config()
    gen = torch.Generator().manual_seed(123)
    view_a = torch.randn(n, 1, *cfg.views.patch_vox, generator=gen)
    view_b = torch.randn(n, 1, *cfg.views.patch_vox, generator=gen)
    params = sample_views((20, 40, 40), cfg.views, gen, n)
    return view_a, view_b, params


def _slice(params: ViewParams, sl: slice) -> ViewParams:
    return ViewParams(params.box_lo[sl], params.box_size[sl], params.flips[sl], params.rot90[sl], params.patch_vox)


def _worker(rank: int, port: int, out_dir: str, mode: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pgl_core import distributed as dist_utils
    from pgl_core.pretrain import pretrain, wrap_model

    world = dist_utils.init_distributed("cpu")
    try:
        if mode == "grads":
            torch.manual_seed(0)
            raw = TinyPGL()
            model = wrap_model(raw, tiny_config(), world)
            view_a, view_b, params = _global_batch()
            half = slice(rank * 2, rank * 2 + 2)
            model(view_a[half], view_b[half], _slice(params, half))["loss"].backward()
            grads = {n: p.grad.clone() for n, p in raw.named_parameters() if p.grad is not None}
            torch.save(grads, os.path.join(out_dir, f"grads_{rank}.pt"))
            dist_utils.barrier()  # both ranks done before either tears gloo down (else a rare abort)
        else:
            models = []
            comps = standin_components()
            comps.model_factory = lambda cfg: models.append(TinyPGL()) or models[-1]
            res = pretrain(tiny_config(), mem_stores(), os.path.join(out_dir, "run"), components=comps)
            assert res.status == "completed", res
            torch.save(models[0].state_dict(), os.path.join(out_dir, f"weights_{rank}.pt"))
    finally:
        dist_utils.cleanup()


def _spawn(tmp_path, mode: str) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), mode), nprocs=WORLD, join=True)


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    _spawn(tmp_path, "grads")
    torch.manual_seed(0)
    ref_model = TinyPGL()
    view_a, view_b, params = _global_batch()
    ref_model(view_a, view_b, params)["loss"].backward()
    ref = {n: p.grad for n, p in ref_model.named_parameters() if p.grad is not None}
    assert not any(n.startswith("target_") for n in ref)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"grads_{rank}.pt")
        assert got.keys() == ref.keys()
        for n in ref:
            assert torch.allclose(got[n], ref[n], atol=1e-6, rtol=1e-5), (rank, n)


def test_ddp_loop_ranks_end_identical(tmp_path):
    _spawn(tmp_path, "loop")
    w0, w1 = torch.load(tmp_path / "weights_0.pt"), torch.load(tmp_path / "weights_1.pt")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    state, _ = ckpt.load_latest(str(tmp_path / "run"))
    assert state["step"] == 8 and len(state["rng"]) == WORLD
    assert state["sampler"]["world_size"] == WORLD
    for k in w0:
        assert torch.equal(state["model"][k], w0[k]), k
    assert (tmp_path / "run" / "contract.json").exists()
