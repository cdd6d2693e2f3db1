"""The study's statistics: paired differences by seed with t intervals, the gate, the verdict."""

import math

import pytest

from pgl_core.study import ci95, gate, headline, paired, results, summarise


def _records(shift_pgl: float, noise: list[float]):
    out = []
    for seed, e in enumerate(noise):
        base = 0.6 + 0.05 * seed  # seeds differ a lot (different cases); the pairing removes that
        for init, extra in (("random", 0.0), ("global", 0.01), ("pgl", shift_pgl)):
            out.append({"dataset": "D", "init": init, "seed": seed,
                        "per_class": {"liver": base + extra + (e if init == "pgl" else 0.0), "liver_tumour": 0.1}})
    return out


def test_t_interval_matches_the_textbook():
    mean, lo, hi = ci95([0.1, 0.2, 0.3, 0.4, 0.5])
    assert mean == pytest.approx(0.3) and hi - mean == pytest.approx(2.7764 * 0.158114 / math.sqrt(5), rel=1e-3)


def test_headline_leaves_small_structures_apart():
    assert headline({"liver": 0.8, "liver_tumour": 0.0}) == pytest.approx(0.8)
    table = summarise(_records(0.0, [0.0] * 5))
    assert set(table["D"]["pgl"]["per_class"]) == {"liver"} and "liver_tumour" in table["D"]["pgl"]["small_per_class"]


def test_paired_differences_find_a_small_consistent_gain_despite_seed_spread():
    table = summarise(_records(0.03, [0.002, -0.003, 0.001, -0.001, 0.0]))
    pr = paired(table)["D"]
    assert pr["pgl-random"]["n"] == 5 and pr["pgl-random"]["ci95"][0] > 0
    assert table["D"]["pgl"]["std_dice"] > 0.05  # unpaired, the spread would hide the 0.03 gain
    null = paired(summarise(_records(0.0, [0.02, -0.02, 0.01, -0.01, 0.0])))["D"]["pgl-random"]
    assert null["ci95"][0] < 0 < null["ci95"][1]


def test_gate_and_verdict():
    ok = gate({"PhantomLiTS": {"liver": 0.9}, "PhantomSpleen": {"spleen": 0.8},
               "PhantomBTCV": {"liver": 0.9, "spleen": 0.8, "kidney_left": 0.6, "kidney_right": 0.6,
                               "stomach": 0.6, "aorta": 0.5}})
    assert ok["passed"]
    bad = results(_records(0.03, [0.0] * 5), [{"dataset": "PhantomLiTS", "per_class": {"liver": 0.5}}])
    assert not bad["gate_checks"]["passed"] and bad["verdict"].startswith("Supervised gate failed")
    good = results(_records(0.03, [0.002, -0.003, 0.001, -0.001, 0.0]),
                   [{"dataset": "PhantomLiTS", "per_class": {"liver": 0.9}}])
    assert set(good) >= {"gate", "datasets", "paired", "verdict"} and "PGL beats" in good["verdict"]
    assert set(good["datasets"]["D"]["pgl"]) >= {"mean_dice", "std_dice", "n_seeds", "dice_per_seed", "per_class"}
