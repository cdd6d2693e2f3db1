"""Losses against explicit-loop references; EMA update and schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pgl_core.ema import ema_tau, update_momentum
from pgl_core.losses import byol_loss, local_loss


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def test_byol_loss_matches_loop_reference():
    p, z = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    ref = sum(2 - 2 * _cos(p[i].tolist(), z[i].tolist()) for i in range(5)) / 5
    assert byol_loss(p, z).item() == pytest.approx(ref, abs=1e-5)
    assert byol_loss(p, 3.0 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-5)


def test_local_loss_matches_loop_reference():
    q, z = torch.randn(2, 4, 3, 2, 3), torch.randn(2, 4, 3, 2, 3)
    total, count = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(2):
                for k in range(3):
                    total += 2 - 2 * _cos(q[b, :, i, j, k].tolist(), z[b, :, i, j, k].tolist())
                    count += 1
    assert local_loss(q, z).item() == pytest.approx(total / count, abs=1e-5)


def test_local_loss_is_zero_for_identical_maps_and_gives_grads():
    q = torch.randn(2, 8, 3, 4, 4, requires_grad=True)
    assert local_loss(q, q.detach()).item() == pytest.approx(0.0, abs=1e-6)
    local_loss(q, torch.randn(2, 8, 3, 4, 4)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_losses_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        byol_loss(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="aligned"):
        local_loss(torch.randn(1, 2, 3, 3, 3), torch.randn(1, 2, 3, 3, 2))


def _pair() -> tuple[nn.Module, nn.Module]:
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online[1].running_mean.fill_(0.5)
    online[1].num_batches_tracked.fill_(7)
    return online, target


def test_ema_tau_zero_copies_and_one_freezes():
    online, target = _pair()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    update_momentum(online, target, 1.0)
    for k, v in target.named_parameters():
        assert torch.equal(v, before[k])
    update_momentum(online, target, 0.0)
    for k, v in online.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)


def test_ema_mixes_parameters_and_copies_buffers():
    online, target = _pair()
    t0 = [p.clone() for p in target.parameters()]
    update_momentum(online, target, 0.9)
    for p_t, p_0, p_o in zip(target.parameters(), t0, online.parameters()):
        torch.testing.assert_close(p_t, 0.9 * p_0 + 0.1 * p_o)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert int(target[1].num_batches_tracked) == 7


def test_ema_refuses_different_structures():
    with pytest.raises(ValueError, match="differ"):
        update_momentum(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)


def test_ema_tau_cosine_schedule():
    assert ema_tau(0, 100, 0.996) == pytest.approx(0.996)
    assert ema_tau(100, 100, 0.996) == pytest.approx(1.0)
    assert ema_tau(50, 100, 0.996) == pytest.approx(0.998)
    taus = [ema_tau(s, 100, 0.99) for s in range(101)]
    assert all(b >= a for a, b in zip(taus, taus[1:]))
    assert ema_tau(500, 100, 0.99) == pytest.approx(1.0)
