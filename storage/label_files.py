"""Label names and colours beside a label map, in the files the viewers read.

For a label map ``<name>.nii.gz`` (or ``.nii`` / ``.nrrd`` / ``.mha``) two text files are written
next to it (:func:`label_file_uris`), both from the model's label names ({value: name}, value 0 the
background) and the colours of :mod:`storage.palette`:

- ``<name>.label_descriptions.txt``: an ITK-SNAP label description file (what ITK-SNAP exports from
  Segmentation -> Export Label Descriptions and reads with Import Label Descriptions): a ``#``
  header, then one line per label ``IDX -R- -G- -B- -A-- VIS MSH "LABEL"`` with colour components
  0..255, opacity 0..1, visibility and mesh visibility 0/1; label 0 is ITK-SNAP's "Clear Label"
  (transparent, hidden).
- ``<name>.ctbl``: a 3D Slicer colour table (Colors module's ``.ctbl`` / ``.txt`` format): header
  lines ``# Color table file ...`` and ``# N values``, then ``index name R G B A`` per label with
  0..255 components; a name's spaces become underscores (the format is space-separated); label 0
  is transparent.

Both are written atomically (local or any fsspec URI).
"""

from __future__ import annotations

from collections.abc import Mapping

from storage import blobs
from storage.palette import colour_of
from storage.readers.image_file import image_suffix

ITKSNAP_SUFFIX = ".label_descriptions.txt"
SLICER_SUFFIX = ".ctbl"
_ITKSNAP_HEADER = """\
# ITK-SnAP Label Description File (written by pgl-ct)
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# IDX label value; R G B colour 0..255; A opacity 0..1; VIS shown 0/1; MSH in 3D mesh 0/1; LABEL name
"""


def label_map_stem(label_map_uri: str) -> str:
    """``label_map_uri`` without its volume suffix (``.nii.gz``, ``.nrrd`` ...; unchanged without one)."""
    suffix = image_suffix(label_map_uri.rstrip("/").rsplit("/", 1)[-1])
    return label_map_uri[: -len(suffix)] if suffix else label_map_uri


def label_file_uris(label_map_uri: str) -> dict[str, str]:
    """{"itksnap": ..., "slicer": ...}: where the label files of ``label_map_uri`` go."""
    stem = label_map_stem(label_map_uri)
    return {"itksnap": stem + ITKSNAP_SUFFIX, "slicer": stem + SLICER_SUFFIX}


def _sorted_names(label_names: Mapping[int | str, str]) -> dict[int, str]:
    try:
        names = {int(k): str(v) for k, v in label_names.items()}
    except ValueError as err:
        raise ValueError(f"label names need integer label values, got {sorted(map(str, label_names))}") from err
    if any(v < 0 for v in names):
        raise ValueError(f"label values must be >= 0, got {sorted(names)}")
    return dict(sorted(names.items()))


def itksnap_text(label_names: Mapping[int | str, str]) -> str:
    """The ITK-SNAP label description file of ``label_names`` ({value: name}); see the module doc."""
    names = _sorted_names(label_names)
    lines = [f"{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    \"Clear Label\""]
    for value, name in names.items():
        if value == 0:
            continue
        r, g, b = colour_of(value)
        clean = name.replace('"', "'")
        lines.append(f"{value:5d} {r:5d} {g:4d} {b:4d} {1:8g} {1:2d} {1:2d}    \"{clean}\"")
    return _ITKSNAP_HEADER + "\n".join(lines) + "\n"


def slicer_ctbl_text(label_names: Mapping[int | str, str], title: str = "pgl-ct labels") -> str:
    """The 3D Slicer colour table of ``label_names`` ({value: name}); see the module doc."""
    names = _sorted_names(label_names)
    names.setdefault(0, "background")
    names = dict(sorted(names.items()))
    lines = [f"# Color table file {title}", f"# {len(names)} values"]
    for value, name in names.items():
        r, g, b = colour_of(value)
        clean = "_".join(name.split()) or f"label_{value}"
        lines.append(f"{value} {clean} {r} {g} {b} {0 if value == 0 else 255}")
    return "\n".join(lines) + "\n"


def write_label_files(label_map_uri: str, label_names: Mapping[int | str, str],
                      storage_options: dict | None = None) -> dict[str, str]:
    """Write both label files beside ``label_map_uri``; returns :func:`label_file_uris`."""
    uris = label_file_uris(label_map_uri)
    title = uris["slicer"].rstrip("/").rsplit("/", 1)[-1]
    blobs.put_bytes_atomic(uris["itksnap"], itksnap_text(label_names).encode(), storage_options)
    blobs.put_bytes_atomic(uris["slicer"], slicer_ctbl_text(label_names, title).encode(), storage_options)
    return uris
