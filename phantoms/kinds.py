"""Dataset kinds of the phantom generator: their label names, which tissues they label, whether
their images carry tumours, and their default dataset folder names.

Every kind images the same anatomy generator (all organs are always in the image); kinds differ
only in which structures are labelled and which lesions are present.
"""

from __future__ import annotations

import numpy as np

from phantoms.anatomy import TISSUE_ID, TISSUES

_BTCV_ORGANS = ("spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "aorta",
                "inferior_vena_cava")

KINDS: dict[str, dict[int, str]] = {
    "btcv": {0: "background", **{i + 1: name for i, name in enumerate(_BTCV_ORGANS)}},
    "lits": {0: "background", 1: "liver", 2: "liver_tumour"},
    "kits": {0: "background", 1: "kidney", 2: "kidney_tumour"},
    "spleen": {0: "background", 1: "spleen"},
    "pool": {},
}

# kind -> {tissue name: label value}; tissues not listed are background.
TISSUE_LABELS: dict[str, dict[str, int]] = {
    "btcv": {name: i + 1 for i, name in enumerate(_BTCV_ORGANS)},
    "lits": {"liver": 1, "liver_tumour": 2},
    "kits": {"kidney_left": 1, "kidney_right": 1, "kidney_tumour": 2},
    "spleen": {"spleen": 1},
    "pool": {},
}

# kind -> probability that a case has liver tumours / a kidney tumour.
TUMOUR_PROBABILITY: dict[str, tuple[float, float]] = {
    "btcv": (0.0, 0.0), "lits": (1.0, 0.0), "kits": (0.0, 1.0), "spleen": (0.0, 0.0), "pool": (0.3, 0.3),
}

DATASET_NAMES: dict[str, str] = {
    "btcv": "PhantomBTCV", "lits": "PhantomLiTS", "kits": "PhantomKiTS", "spleen": "PhantomSpleen",
    "pool": "PhantomPool",
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {sorted(KINDS)}")
    return kind


def label_lut(kind: str) -> np.ndarray:
    """(n_tissues,) uint8 lookup table: tissue id -> label value of ``kind``."""
    lut = np.zeros(len(TISSUES), dtype=np.uint8)
    for tissue, value in TISSUE_LABELS[check_kind(kind)].items():
        lut[TISSUE_ID[tissue]] = value
    return lut
