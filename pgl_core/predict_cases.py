"""``pgl predict`` on many cases: one model load, one output set per case, skip what is done.

:func:`gather_cases` turns the inputs (files, folders of volumes, DICOM trees, MSD folders; local or
``s3://``) into cases with ``storage``'s discovery (:func:`storage.readers.discover_cases`; ids
made unique across all inputs as ingest does: a volume's file stem, ``dcm-<hash>`` for a DICOM
series). :func:`predict_cases` predicts each into ``<output>/<case id>.*``
(:mod:`pgl_core.predict_outputs`), skipping complete cases unless ``force``; a case that fails is
recorded with its reason and the others go on. :func:`predict_case` is the body shared with
single-file mode: read (the training plan's reader settings), segment, write the label map, the
ITK-SNAP and Slicer label files, the DICOM SEG when asked and the input is DICOM, the record last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pgl_core.contracts import SegmenterContract, load_segmenter
from pgl_core.predict import input_source, pick_device, predict_volume
from pgl_core.predict_outputs import CaseOutputs, forget, is_complete, model_fingerprint, write_record
from storage import blobs
from storage.dicom_seg import source_headers, write_dicom_seg
from storage.errors import StorageError
from storage.label_files import write_label_files
from storage.plan import read_options
from storage.readers import CaseSource, discover_cases, read_case
from storage.readers.discover import unique_case_ids
from storage.writers import write_volume

Progress = Callable[[str, str], None]  # (case id, status) after each case


@dataclass
class PredictSummary:
    """What a ``pgl predict`` run did. ``failed``: (case, source, reason); ``not_dicom``: cases that
    got no DICOM SEG because their input is not DICOM; ``ignored``: (file, why) of input files that
    are not images (pixel-less DICOM objects)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    dicom_seg: list[str] = field(default_factory=list)
    not_dicom: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class Segmenter:
    """A loaded model with what every case needs from it."""

    model: torch.nn.Module
    contract: SegmenterContract
    device: torch.device
    fingerprint: str

    @classmethod
    def load(cls, model_dir: str, device: str | torch.device | None = None,
             storage_options: dict | None = None) -> "Segmenter":
        dev = pick_device(device)
        model, contract = load_segmenter(model_dir, storage_options, device=dev)
        return cls(model, contract, dev, model_fingerprint(model_dir, storage_options))

    @property
    def version(self) -> str:
        """Software and model identity for the DICOM SEG (64 characters at most)."""
        return f"pgl-ct {_package_version()} model {self.fingerprint[:12]}"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgl-ct")
    except PackageNotFoundError:
        return "unknown"


def gather_cases(inputs: Sequence[str], storage_options: dict | None = None,
                 ) -> tuple[list[CaseSource], list[tuple[str, str]], list[tuple[str, str]]]:
    """(cases, problems, ignored) of all ``inputs``: problems are (file, reason) of inputs that cannot
    be cases (unreadable DICOM headers, clashing ids); ignored are pixel-less DICOM objects."""
    cases, problems, ignored = [], [], []
    for uri in inputs:
        found, found_problems, _ = discover_cases(uri, storage_options)
        for where, why in found_problems:
            (ignored if "without pixel data" in why else problems).append((where, why))
        # a path relative to its own input is not unique across inputs: identify by the first file
        cases += [replace(c, source=c.source if c.kind == "dicom" else c.image_uris[0]) for c in found]
    unique, id_problems = unique_case_ids(list(dict.fromkeys(cases)))
    return sorted(unique, key=lambda c: c.case_id), problems + id_problems, ignored


def predict_case(seg: Segmenter, source: CaseSource, outputs: CaseOutputs, dicom_seg: bool = False,
                 storage_options: dict | None = None) -> dict[str, Any]:
    """Predict one case and write its outputs (module doc); returns its record."""
    forget(outputs, storage_options)
    is_dicom = source.kind == "dicom"
    headers = source_headers(source, storage_options) if dicom_seg and is_dicom else None  # fails early
    image, _, meta = read_case(source, storage_options=storage_options, **read_options(seg.contract.plan))
    labels = predict_volume(seg.model, seg.contract, image, seg.device)
    names = dict(seg.contract.label_names)
    write_volume(labels, outputs.label_map, storage_options)
    write_label_files(outputs.label_map, names, storage_options)
    if headers is not None:
        write_dicom_seg(labels, source, names, outputs.dicom_seg, seg.version, storage_options, headers=headers)
    else:  # a SEG left from an earlier prediction would no longer match the label map
        blobs.delete_uri(outputs.dicom_seg, storage_options)
    return write_record(outputs, source.case_id, seg.fingerprint, names, meta["source_checksum"], is_dicom,
                        dicom_seg and is_dicom, storage_options)


def _failure(source: CaseSource, err: Exception) -> tuple[str, str, str]:
    """(case, file or folder at fault, reason) of a failed case."""
    first = source.image_uris[0]
    where = first.rsplit("/", 1)[0] if source.kind == "dicom" else first
    if isinstance(err, StorageError):
        named = getattr(err, "source", "")
        where = named if named and not named.startswith("case ") else where
        return source.case_id, where, getattr(err, "reason", "") or str(err)
    return source.case_id, where, f"{type(err).__name__}: {err}"


def predict_cases(model_dir: str, inputs: Sequence[str], output_dir: str, force: bool = False,
                  dicom_seg: bool = False, device: str | torch.device | None = None,
                  progress: Progress | None = None, storage_options: dict | None = None,
                  cases: list[CaseSource] | None = None) -> PredictSummary:
    """Predict every case of ``inputs`` into ``output_dir`` (module doc); ``cases``: already
    gathered ones (then ``inputs`` is not searched again)."""
    summary = PredictSummary()
    if cases is None:
        cases, problems, summary.ignored = gather_cases(inputs, storage_options)
        summary.failed += [("(input)", where, why) for where, why in problems]
    seg = Segmenter.load(model_dir, device, storage_options)
    for source in cases:
        outputs = CaseOutputs.in_folder(output_dir, source.case_id)
        status = _one(seg, source, outputs, force, dicom_seg, summary, storage_options)
        if progress is not None:
            progress(source.case_id, status)
    return summary


def _one(seg: Segmenter, source: CaseSource, outputs: CaseOutputs, force: bool, dicom_seg: bool,
         summary: PredictSummary, storage_options: dict | None) -> str:
    """Predict or skip one case, noting the outcome in ``summary``; returns the status."""
    if not force and is_complete(outputs, seg.fingerprint, dicom_seg, storage_options):
        summary.skipped.append(source.case_id)
        return "skipped"
    try:
        record = predict_case(seg, source, outputs, dicom_seg, storage_options)
    except MemoryError:
        raise
    except Exception as err:  # one bad case never stops the others; its reason is reported
        summary.failed.append(_failure(source, err))
        return "failed"
    summary.done.append(source.case_id)
    if dicom_seg:
        (summary.dicom_seg if "dicom_seg" in record["files"] else summary.not_dicom).append(source.case_id)
    return "done"


def predict_one(model_dir: str, input_uri: str, output_uri: str, force: bool = False, dicom_seg: bool = False,
                device: str | torch.device | None = None, storage_options: dict | None = None) -> PredictSummary:
    """Single-file mode: the one case of ``input_uri`` (a volume file or a folder holding one DICOM
    series; else RefusedInput) into the label map ``output_uri`` and the files beside it."""
    source = input_source(input_uri, storage_options)
    seg = Segmenter.load(model_dir, device, storage_options)
    summary = PredictSummary()
    _one(seg, source, CaseOutputs.beside(output_uri), force, dicom_seg, summary, storage_options)
    return summary
