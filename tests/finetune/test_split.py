"""Seeded split and nested label budgets."""

from __future__ import annotations

import pytest

from pgl_core.config import ConfigError
from pgl_core.split import apply_budget, budget_count, make_split, split_with_budget

IDS = [f"case{i:03d}" for i in range(20)]


def test_split_is_seeded_disjoint_and_covering():
    a = make_split(IDS, 0.2, 0.2, seed=3)
    assert a == make_split(list(reversed(IDS)), 0.2, 0.2, seed=3)  # input order does not matter
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (12, 4, 4)
    assert sorted(a["train"] + a["val"] + a["test"]) == IDS
    assert make_split(IDS, 0.2, 0.2, seed=4) != a


@pytest.mark.parametrize("n", [3, 4, 5])
def test_small_datasets_keep_one_case_each(n):
    split = make_split(IDS[:n], 0.2, 0.2, seed=0)
    assert len(split["val"]) >= 1 and len(split["test"]) >= 1 and len(split["train"]) >= 1


def test_two_cases_keep_a_training_case_and_zero_fraction_means_none():
    assert len(make_split(IDS[:2], 0.2, 0.2, seed=0)["train"]) >= 1
    assert make_split(IDS[:10], 0.0, 0.0, seed=0)["train"] == IDS[:10]


def test_budgets_are_nested_and_only_subsample_train():
    split = make_split(IDS, 0.2, 0.2, seed=7)
    previous: set[str] = set()
    for k in range(1, len(split["train"]) + 1):
        chosen = set(apply_budget(split["train"], k, seed=7))
        assert len(chosen) == k and previous <= chosen and chosen <= set(split["train"])
        previous = chosen
    full = split_with_budget(IDS, 0.2, 0.2, 7, 0.5)
    assert full["val"] == split["val"] and full["test"] == split["test"] and len(full["train"]) == 6
    assert set(full["train"]) == set(apply_budget(split["train"], 6, seed=7))


def test_budget_count_rules():
    assert budget_count(10, 1) == 1 and budget_count(10, 3.0) == 3 and budget_count(10, 0.25) == 2
    assert budget_count(10, 0.01) == 1
    with pytest.raises(ConfigError, match="only 10"):
        budget_count(10, 11)
    with pytest.raises(ConfigError, match="whole number"):
        budget_count(10, 2.5)
