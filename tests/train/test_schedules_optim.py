"""Learning-rate / EMA schedules and the optimisers (LARS exclusions, parameter groups)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pgl_core.config import OptimConfig
from pgl_core.optim import LARS, build_optimizer, param_groups
from pgl_core.schedules import lr_at, set_lr, tau_at


def test_lr_warmup_is_linear_then_cosine_to_floor():
    total, peak, warm, floor = 100, 0.2, 10, 0.1
    lrs = [lr_at(s, total, peak, warm, floor) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm)
    assert lrs[4] == pytest.approx(peak * 5 / warm)
    assert lrs[9] == pytest.approx(peak)
    assert lrs[10] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(peak * floor)
    mid = 10 + (total - 1 - 10) / 2
    assert lr_at(int(mid), total, peak, warm, floor) == pytest.approx(
        peak * floor + (peak - peak * floor) * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89)))
    decay = lrs[10:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_lr_without_warmup_starts_at_peak():
    assert lr_at(0, 50, 1e-3, 0, 0.0) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        lr_at(0, 0, 1e-3, 0, 0.0)


def test_tau_rises_from_base_to_one():
    assert tau_at(0, 100, 0.996) == pytest.approx(0.996)
    assert tau_at(100, 100, 0.996) == pytest.approx(1.0)
    assert tau_at(50, 100, 0.996) == pytest.approx(0.998)
    taus = [tau_at(s, 100, 0.99) for s in range(101)]
    assert taus[0] == pytest.approx(0.99, abs=1e-6) and taus[-1] == pytest.approx(1.0, abs=1e-6)
    assert all(a <= b + 1e-12 for a, b in zip(taus, taus[1:]))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.fc = nn.Linear(4, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_param_groups_exclude_bias_and_norm_and_frozen():
    net = _Net()
    decay, excluded = param_groups(net.named_parameters(), 0.1)
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    assert {id(p) for p in excluded["params"]} == {id(net.conv.bias), id(net.norm.weight), id(net.norm.bias),
                                                   id(net.fc.bias)}
    assert excluded["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("lars", LARS)])
def test_build_optimizer_kinds(name, cls):
    opt = build_optimizer(_Net(), OptimConfig(name=name, lr=0.05, weight_decay=0.01))
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    set_lr(opt, 0.3)
    assert all(g["lr"] == 0.3 for g in opt.param_groups)


def test_lars_adapts_weights_but_not_excluded_params():
    w = nn.Parameter(torch.full((4, 4), 2.0))
    b = nn.Parameter(torch.full((4,), 2.0))
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars_exclude": False},
                {"params": [b], "weight_decay": 0.5, "lars_exclude": True}], lr=1.0, momentum=0.0, eta=0.01)
    w.grad = torch.full((4, 4), 100.0)
    b.grad = torch.full((4,), 100.0)
    opt.step()
    # weight: trust = eta * ||w|| / ||g|| = 0.01 * 8 / 400 -> step = 100 * 2e-4 = 0.02
    assert torch.allclose(w, torch.full((4, 4), 2.0 - 0.02))
    # bias: plain SGD step (no adaptation, no decay)
    assert torch.allclose(b, torch.full((4,), 2.0 - 100.0))


def test_lars_weight_decay_and_momentum():
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.9, weight_decay=1.0, eta=1.0)
    for _ in range(2):
        w.grad = torch.ones(2, 2)
        before = w.detach().clone()
        opt.step()
    g = torch.ones(2, 2) + before
    trust = torch.linalg.vector_norm(before) / torch.linalg.vector_norm(g)
    buf = opt.state[w]["momentum_buffer"]
    assert torch.allclose(w, before - 0.1 * buf)
    assert torch.allclose(buf, 0.9 * torch.ones(2, 2) + g * trust)  # first-step buffer was g0 * trust0 = 1
