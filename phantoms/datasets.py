"""Writing whole phantom datasets: the MSD NIfTI layout and/or one DICOM series per case.

Layout under ``out_dir`` (``<Name>`` defaults to PhantomBTCV / PhantomLiTS / PhantomKiTS /
PhantomSpleen / PhantomPool)::

    <Name>/dataset.json                    MSD style: labels, modality, training list
    <Name>/imagesTr/<case>.nii.gz          int16 HU
    <Name>/labelsTr/<case>.nii.gz          uint8 labels (not for the unlabelled "pool" kind)
    <Name>_dicom/<case>/IM0001.dcm ...     CT series of the same image (formats include "dicom")

The unlabelled "pool" kind keeps its images in ``imagesTr/`` and lists them under "training"
with an "image" key only (no "label" key, no ``labelsTr/``); its "labels" map is empty.
Case ids are ``<kind>_<nnnn>``; case seeds derive from (seed, kind, case index), so datasets of
different kinds written with the same seed do not share bodies.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from phantoms.case import render_case
from phantoms.kinds import DATASET_NAMES, KINDS, check_kind
from phantoms.writers import DicomIdentity, write_dicom_series, write_msd_json, write_nifti
from storage.volume import Volume

FORMATS = ("nifti", "dicom")
GENERATOR_VERSION = 1


def case_seed(seed: int, kind: str, index: int) -> int:
    """The seed of case ``index`` of a ``kind`` dataset written with dataset seed ``seed``."""
    entropy = [int(seed) % (2**63), list(KINDS).index(check_kind(kind)), int(index)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def _check_request(out_dir: str, kind: str, n_cases: int, formats: tuple[str, ...]) -> None:
    check_kind(kind)
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
    if "://" in out_dir and not out_dir.startswith("file://"):
        raise ValueError(f"phantoms are written to a local directory, got {out_dir!r}")


def write_dataset(
    out_dir: str,
    kind: str,
    n_cases: int,
    seed: int = 0,
    shape_zyx: tuple[int, int, int] = (64, 128, 128),
    formats: tuple[str, ...] = ("nifti",),
    name: str | None = None,
    progress: Callable[[int], None] | None = None,
    phase: str = "portal_venous",
) -> dict:
    """Generate ``n_cases`` phantoms of ``kind`` in contrast ``phase`` and write them (see module doc
    for the layout).

    ``progress`` is called with the number of cases finished after each case. Returns a summary:
    ``{"name", "kind", "folders": {format: path}, "cases": [ids], "case_seeds": {id: seed},
    "labels": {int: name}, "n_cases", "seed", "shape_zyx"}``.
    """
    formats = tuple(formats)
    _check_request(out_dir, kind, n_cases, formats)
    out_dir = out_dir.removeprefix("file://")
    name = name or DATASET_NAMES[kind]
    folders = {"nifti": os.path.join(out_dir, name), "dicom": os.path.join(out_dir, f"{name}_dicom")}
    folders = {f: folders[f] for f in FORMATS if f in formats}
    cases, seeds, entries = [], {}, []
    for i in range(n_cases):
        case_id, cs = f"{kind}_{i:04d}", case_seed(seed, kind, i)
        phantom = render_case(kind, cs, tuple(shape_zyx), phase=phase)
        image, label = phantom.image, phantom.label
        if "nifti" in folders:
            entries.append(_write_nifti_case(folders["nifti"], case_id, image, label))
        if "dicom" in folders:
            who = DicomIdentity.synthetic(seed, i, cs, name)
            write_dicom_series(image, os.path.join(folders["dicom"], case_id), who)
        cases.append(case_id)
        seeds[case_id] = cs
        if progress is not None:
            progress(i + 1)
    if "nifti" in folders:
        _write_json(folders["nifti"], name, kind, seed, shape_zyx, seeds, entries)
    return {"name": name, "kind": kind, "folders": folders, "cases": cases, "case_seeds": seeds,
            "labels": dict(KINDS[kind]), "n_cases": n_cases, "seed": int(seed), "shape_zyx": tuple(shape_zyx),
            "phase": phase}


def _write_json(folder: str, name: str, kind: str, seed: int, shape_zyx: tuple[int, int, int],
                seeds: dict[str, int], entries: list[dict[str, str]]) -> None:
    os.makedirs(folder, exist_ok=True)
    extra = {"kind": kind, "seed": int(seed), "shape_zyx": list(shape_zyx), "case_seeds": seeds,
             "generator_version": GENERATOR_VERSION}
    write_msd_json(folder, name, f"Synthetic abdominal CT phantoms, kind {kind!r}", KINDS[kind], entries, extra)


def _write_nifti_case(folder: str, case_id: str, image: Volume, label: Volume | None) -> dict[str, str]:
    """Write one case's image (and label) in the MSD layout; returns its dataset.json entry."""
    entry = {"image": f"./imagesTr/{case_id}.nii.gz"}
    write_nifti(image, os.path.join(folder, "imagesTr", f"{case_id}.nii.gz"))
    if label is not None:
        entry["label"] = f"./labelsTr/{case_id}.nii.gz"
        write_nifti(label, os.path.join(folder, "labelsTr", f"{case_id}.nii.gz"))
    return entry


def write_datasets(out_dir: str, kinds: list[str], n_cases: int, seed: int = 0,
                   shape_zyx: tuple[int, int, int] = (64, 128, 128), formats: tuple[str, ...] = ("nifti",),
                   phase: str = "portal_venous", progress: Callable[[], None] | None = None) -> list[dict]:
    """One dataset per kind under ``out_dir`` (kind ``i`` seeded ``seed + 1000 * i``); every kind and
    format is checked before anything is written. ``progress()`` is called after each case.
    Returns :func:`write_dataset`'s summaries."""
    for kind in kinds:
        _check_request(out_dir, kind, n_cases, tuple(formats))
    tick = (lambda n: progress()) if progress is not None else None
    return [write_dataset(out_dir, kind, n_cases, seed=seed + 1000 * i, shape_zyx=shape_zyx, formats=formats,
                          phase=phase, progress=tick) for i, kind in enumerate(kinds)]
