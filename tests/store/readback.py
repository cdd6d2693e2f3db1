"""What a reader must be able to do with a store after any crash: every listed case reads fully as
recorded, a training data pass over the store succeeds, and case folders hold only what records name."""

from __future__ import annotations

import numpy as np

from pgl_core.data import CropSampler, CropStream, index_cases, make_loader
from storage.store import DatasetStore
from storage.uri import open_fs

CROP = (8, 16, 16)
Arrays = dict[str, tuple[np.ndarray, np.ndarray | None]]


def arrays_of(store: DatasetStore) -> Arrays:
    """Image and label (None when unlabelled) of every done case."""
    cases = store.manifest()["cases"]
    return {c: (store.read_full(c), store.read_full(c, "label") if cases[c]["labelled"] else None)
            for c in store.done_cases()}


def check_readable(store: DatasetStore, expected: Arrays) -> None:
    """The listed cases are exactly ``expected``'s and read back as them, with the recorded shapes;
    then one epoch of training crops over every listed case."""
    manifest = store.manifest()
    listed = store.done_cases()
    assert listed == sorted(expected), f"listed {listed}, expected {sorted(expected)}"
    for case in listed:
        image = store.read_full(case)
        assert list(image.shape) == manifest["cases"][case]["shape_zyx"], case
        np.testing.assert_array_equal(image, expected[case][0], err_msg=f"case {case} image")
        if expected[case][1] is not None:
            np.testing.assert_array_equal(store.read_full(case, "label"), expected[case][1],
                                          err_msg=f"case {case} label")
    training_pass(store)


def training_pass(store: DatasetStore) -> None:
    """One epoch of pretraining crops (``pgl_core.data`` through its loader) over every listed case."""
    refs = index_cases([store])
    stream = CropStream([store], refs, CropSampler(len(refs), 1, 0, 1, seed=0), 1, CROP)
    loader = iter(make_loader(stream, workers=0, pin_memory=False))
    seen = {int(next(loader)["case"][0]) for _ in refs}
    assert seen == set(range(len(refs)))


def check_tidy(store: DatasetStore) -> None:
    """Each done case's folder holds the group metadata and the one generation its record names."""
    fs, path = open_fs(store.uri, store.storage_options)
    fs.invalidate_cache()
    for case in store.done_cases():
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(f"{path}/{case}", detail=False))
        assert names == sorted([store.case_path(case).rsplit("/", 1)[-1], "zarr.json"]), (case, names)
