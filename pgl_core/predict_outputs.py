"""What ``pgl predict`` writes for one case, where, and when a case counts as already predicted.

For a label map ``<name>.nii.gz`` (single-file mode: the ``--output`` file, any of ``.nii.gz`` /
``.nii`` / ``.nrrd`` / ``.mha``; folder mode: ``<output>/<case id>.nii.gz``) the outputs are:

| file | what |
|---|---|
| ``<name>.nii.gz`` | uint8 label map in the input's geometry (size, spacing, origin, direction) |
| ``<name>.label_descriptions.txt`` | ITK-SNAP label descriptions (``storage.label_files``) |
| ``<name>.ctbl`` | 3D Slicer colour table (``storage.label_files``) |
| ``<name>.seg.dcm`` | DICOM SEG referencing the source series (DICOM inputs, when asked) |
| ``<name>.prediction.json`` | the completion record, written last |

The record (:func:`write_record`) holds the format, the case id, the model's fingerprint (sha256
of its ``contract.json``), the label names, the input's checksum and the names of the files written;
no patient field. A case is complete (:func:`is_complete`) when its record reads, names the same
model, lists a DICOM SEG when one was asked for a DICOM case, and every file it lists exists. Each
file is written atomically, and a redone case loses its record first, so a killed run leaves every
case either complete or redone on the next run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from storage import blobs
from storage.dicom_seg import SEG_SUFFIX
from storage.label_files import label_file_uris, label_map_stem
from storage.uri import join_uri

RECORD_SUFFIX = ".prediction.json"
RECORD_FORMAT = "pgl-prediction/1"
FOLDER_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class CaseOutputs:
    """Where one case's files go (URIs; see the module doc)."""

    label_map: str
    itksnap: str
    slicer: str
    dicom_seg: str
    record: str

    @classmethod
    def beside(cls, label_map_uri: str) -> "CaseOutputs":
        """The outputs of the label map ``label_map_uri`` (single-file mode)."""
        stem = label_map_stem(label_map_uri)
        files = label_file_uris(label_map_uri)
        return cls(label_map_uri, files["itksnap"], files["slicer"], stem + SEG_SUFFIX, stem + RECORD_SUFFIX)

    @classmethod
    def in_folder(cls, folder_uri: str, case_id: str) -> "CaseOutputs":
        """The outputs of case ``case_id`` in the output folder (folder mode)."""
        return cls.beside(join_uri(folder_uri, case_id + FOLDER_SUFFIX))


def model_fingerprint(model_dir: str, storage_options: dict | None = None) -> str:
    """sha256 (hex) of the model directory's ``contract.json``: a retrained model is a new model."""
    from pgl_core.contracts import CONTRACT_FILE

    return hashlib.sha256(blobs.get_bytes(join_uri(model_dir, CONTRACT_FILE), storage_options)).hexdigest()


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def write_record(outputs: CaseOutputs, case_id: str, model_sha256: str, label_names: dict[str, str],
                 source_checksum: str, dicom: bool, wrote_seg: bool, storage_options: dict | None = None) -> dict:
    """Write the completion record (last); returns it."""
    files = {"label_map": outputs.label_map, "itksnap": outputs.itksnap, "slicer": outputs.slicer}
    if wrote_seg:
        files["dicom_seg"] = outputs.dicom_seg
    record = {"format": RECORD_FORMAT, "case_id": case_id, "model_sha256": model_sha256,
              "label_names": dict(label_names), "source_checksum": source_checksum, "dicom": bool(dicom),
              "files": {k: _name(v) for k, v in files.items()}}
    blobs.put_bytes_atomic(outputs.record, json.dumps(record, indent=1).encode(), storage_options)
    return record


def read_record(outputs: CaseOutputs, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The case's record, or None when there is none or it does not read."""
    if not blobs.exists(outputs.record, storage_options):
        return None
    try:
        record = json.loads(blobs.get_bytes(outputs.record, storage_options))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def is_complete(outputs: CaseOutputs, model_sha256: str, want_seg: bool,
                storage_options: dict | None = None) -> bool:
    """True when the case was predicted by this model with every output asked for (module doc)."""
    record = read_record(outputs, storage_options)
    if record is None or record.get("model_sha256") != model_sha256:
        return False
    files = record.get("files") or {}
    if want_seg and record.get("dicom") and "dicom_seg" not in files:
        return False
    folder = outputs.record[: -len(_name(outputs.record))]
    return all(blobs.exists(folder + name, storage_options) for name in files.values())


def forget(outputs: CaseOutputs, storage_options: dict | None = None) -> None:
    """Remove the case's record (before it is redone; none is fine)."""
    blobs.delete_uri(outputs.record, storage_options)
