"""The fixed, seeded train / val / test split of a labelled dataset and the label budget.

The split is a pure function of the sorted case ids and the seed: one permutation, test cases
first, then validation, the rest training. With at least 3 labelled cases, val and test each get
at least one case whenever their fraction is positive (and training keeps at least one).

The label budget subsamples the *training* part only, from a second seeded permutation that does
not depend on the budget, so budgets are nested: for the same seed, the cases used with budget
``k`` are the first ``k`` of the cases used with any larger budget. ``labelled`` is a count when
``>= 1`` and a fraction of the training cases when ``< 1`` (at least one case).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pgl_core.config import ConfigError

_SPLIT_SALT, _BUDGET_SALT = 0x5B11, 0xB0D6


def _n_held_out(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    k = int(round(n * fraction))
    return max(1, k) if n >= 3 else k


def make_split(case_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` sorted case-id lists (disjoint, covering ``case_ids``)."""
    ids = sorted(set(case_ids))
    if not ids:
        raise ConfigError("no labelled cases to split")
    n = len(ids)
    n_test, n_val = _n_held_out(n, test_fraction), _n_held_out(n, val_fraction)
    while n_test + n_val > n - 1 and (n_test or n_val):  # keep at least one training case
        if n_val >= n_test and n_val:
            n_val -= 1
        else:
            n_test -= 1
    perm = [ids[i] for i in np.random.default_rng([seed, _SPLIT_SALT]).permutation(n)]
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def budget_count(n_train: int, labelled: float | None) -> int:
    """Number of training cases a budget ``labelled`` selects out of ``n_train`` (None = all)."""
    if labelled is None:
        return n_train
    if not labelled > 0 or not math.isfinite(labelled):
        raise ConfigError(f"finetune.labelled must be a count >= 1 or a fraction in (0, 1), got {labelled}")
    if labelled >= 1:
        if labelled != int(labelled):
            raise ConfigError(f"finetune.labelled {labelled} >= 1 must be a whole number of cases")
        count = int(labelled)
        if count > n_train:
            raise ConfigError(f"finetune.labelled asks for {count} labelled training cases but the split "
                              f"has only {n_train}; use --labelled {n_train} or fewer, or a fraction < 1")
        return count
    return max(1, int(round(labelled * n_train)))


def apply_budget(train_ids: list[str], labelled: float | None, seed: int) -> list[str]:
    """The first ``budget_count`` cases of a seeded permutation of the training cases (sorted)."""
    ids = sorted(train_ids)
    count = budget_count(len(ids), labelled)
    order = np.random.default_rng([seed, _BUDGET_SALT]).permutation(len(ids))
    return sorted(ids[i] for i in order[:count])


def split_with_budget(case_ids: list[str], val_fraction: float, test_fraction: float, seed: int,
                      labelled: float | None) -> dict[str, Any]:
    """The split plus ``"train_all"`` (the whole training part) and ``"train"`` (the budget)."""
    split = make_split(case_ids, val_fraction, test_fraction, seed)
    return {"train": apply_budget(split["train"], labelled, seed), "train_all": split["train"],
            "val": split["val"], "test": split["test"], "labelled": labelled, "seed": seed}
