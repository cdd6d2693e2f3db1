"""Case discovery: turn an input folder (local or any fsspec URI) into a sorted list of cases.

Layouts:
- MSD: ``dataset.json`` and/or ``imagesTr`` (+ ``labelsTr`` matched by file name, + optional
  ``imagesTs``). Label names come from ``dataset.json`` (``{"0": "background"}`` or the
  nnU-Net v2 form ``{"background": 0}``).
- Folder: every volume file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) is one unlabelled case.
- DICOM: files of any name are sniffed; one case per series key (see ``storage.readers.dicom``).
Folders and files may be mixed. Hidden files (``.*``, including macOS ``._*``) and files that are
neither volumes nor DICOM are skipped and listed (``info["ignored"]``); unreadable DICOM headers and
image-less series are reported as problems. A file stem that cannot be a case id (spaces, other
characters) becomes a safe id with a hash of its path. A missing input or a malformed
``dataset.json`` is an :class:`InputError`. Only headers are read, never pixel data.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, replace

import fsspec
from fsspec.implementations.local import LocalFileSystem

from storage.errors import InputError, UnreadableInput
from storage.layout import is_valid_name
from storage.readers.dicom import DicomHeader, case_id_for, looks_like_dicom, read_header
from storage.readers.image_file import file_stem, image_suffix

_NOT_IMAGE_SUFFIXES = (
    ".json", ".txt", ".md", ".csv", ".tsv", ".py", ".yaml", ".yml", ".xml", ".html", ".pdf", ".png",
    ".jpg", ".jpeg", ".zip", ".tar", ".whl", ".pyc", ".dump", ".icc", ".log", ".raw", ".zraw", ".gz",
)


@dataclass(frozen=True)
class CaseSource:
    """One case to ingest: where its files are, never who it is."""

    case_id: str
    kind: str  # "dicom" | "image"
    image_uris: tuple[str, ...]
    label_uri: str | None
    split: str  # "train" | "test" | "unlabelled"
    source: str = ""  # identity of the input: its path relative to the input root (recorded)


class _Tree:
    """A file system and a root, producing URIs in the caller's form (plain paths locally)."""

    def __init__(self, input_uri: str, storage_options: dict | None) -> None:
        self.fs, self.root = fsspec.core.url_to_fs(input_uri, **(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = self.root.rstrip("/") or "/"

    def uri(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    def rel(self, path: str) -> str:
        return path[len(self.root):].lstrip("/")

    def files(self) -> tuple[list[str], list[str]]:
        """(files, hidden files skipped) under the root; InputError when the root does not exist."""
        if self.fs.isfile(self.root):
            return [self.root], []
        if not self.fs.isdir(self.root):
            raise InputError(f"input {self.uri(self.root)} does not exist (or is not a folder or file)")
        found = sorted(self.fs.find(self.root))
        hidden = [p for p in found if any(part.startswith(".") for part in self.rel(p).split("/"))]
        return [p for p in found if p not in set(hidden)], hidden


def _label_names(tree: _Tree, files: list[str]) -> dict[int, str]:
    meta = f"{tree.root}/dataset.json"
    if meta not in files:
        return {}
    with tree.fs.open(meta, "rb") as fh:
        try:
            labels = json.load(fh).get("labels") or {}
        except (ValueError, AttributeError) as err:
            raise InputError(f"{tree.uri(meta)} is not a valid dataset.json ({err}); fix or remove it") from None
    if not isinstance(labels, dict):
        raise InputError(f"{tree.uri(meta)}: 'labels' must be a mapping of value -> name, got {type(labels).__name__}")
    out: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).lstrip("-").isdigit():
            out[int(key)] = str(value)
        elif isinstance(value, int):
            out[value] = str(key)
    return dict(sorted(out.items()))


def _msd_cases(tree: _Tree, files: list[str]) -> list[CaseSource]:
    by_rel = {tree.rel(p): p for p in files}
    cases = []
    for folder, split in (("imagesTr", "train"), ("imagesTs", "test")):
        for rel, path in by_rel.items():
            head, _, name = rel.rpartition("/")
            if head != folder or image_suffix(name) is None:
                continue
            label = by_rel.get(f"labelsTr/{name}") if split == "train" else None
            cases.append(CaseSource(file_stem(name), "image", (tree.uri(path),),
                                    tree.uri(label) if label else None, split, rel))
    return cases


def _file_cases(tree: _Tree, paths: list[str]) -> list[CaseSource]:
    return [CaseSource(file_stem(p), "image", (tree.uri(p),), None, "unlabelled", tree.rel(p)) for p in paths]


def _safe_id(case: CaseSource) -> CaseSource:
    """A case whose file stem cannot be an id gets a safe one: the stem's allowed characters plus a
    hash of its source path (stable, and distinct from any plain stem)."""
    if is_valid_name(case.case_id):
        return case
    kept = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in case.case_id)
    kept = kept.lstrip("._-")[:160] or "case"
    return replace(case, case_id=f"{kept}-{hashlib.sha256(case.source.encode()).hexdigest()[:12]}")


def _hashed(case: CaseSource, digits: int) -> CaseSource:
    return replace(case, case_id=f"{case.case_id}-{hashlib.sha256(case.source.encode()).hexdigest()[:digits]}")


def unique_case_ids(cases: list[CaseSource]) -> tuple[list[CaseSource], list[tuple[str, str]]]:
    """Make case ids unique by construction (before anything is written): inputs that share an id
    (``x.nii`` beside ``x.nii.gz``, one stem in two folders, ``imagesTr/x`` and ``imagesTs/x``) get
    ``<id>-<6 hex of their relative path>``, except that one labelled training case keeps its plain
    id (so adding a test image never renames it). Stable: the same inputs give the same ids. An id
    that still collides (a file literally named like another's hashed id) gets a 12-digit hash;
    anything left colliding after that is refused with the reason, never overwritten."""
    groups: dict[str, list[CaseSource]] = defaultdict(list)
    for c in map(_safe_id, cases):
        groups[c.case_id].append(c)
    out: list[CaseSource] = []
    hashed: set[str] = set()
    for members in groups.values():
        if len(members) == 1:
            out += members
            continue
        keep = [c for c in members if c.split == "train" and c.label_uri]
        keep = keep[:1] if len(keep) == 1 else []
        for c in members:
            new = c if c in keep else _hashed(c, 6)
            if new is not c:
                hashed.add(new.source)
            out.append(new)
    counts: dict[str, int] = defaultdict(int)
    for c in out:
        counts[c.case_id] += 1
    out = [_hashed(replace(c, case_id=c.case_id.rsplit("-", 1)[0]), 12)
           if counts[c.case_id] > 1 and c.source in hashed else c for c in out]
    final: dict[str, list[CaseSource]] = defaultdict(list)
    for c in out:
        final[c.case_id].append(c)
    problems = [(c.source or c.image_uris[0], f"case id {cid!r} is claimed by {len(group)} inputs "
                 f"({', '.join(sorted(g.source for g in group))}): refused, rename one of them")
                for cid, group in final.items() if len(group) > 1 for c in group]
    return [g[0] for g in final.values() if len(g) == 1], problems


def _sniff(tree: _Tree, path: str) -> DicomHeader | None:
    """Header of a DICOM file; None for non-DICOM; UnreadableInput for a broken DICOM file."""
    name = path.rsplit("/", 1)[-1]
    with tree.fs.open(path, "rb") as fh:
        head = fh.read(132)
        if not looks_like_dicom(head, name):
            return None
        strong = head[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))
        fh.seek(0)
        try:
            return read_header(fh, tree.uri(path))
        except UnreadableInput:
            if strong:
                raise
            return None


def _dicom_cases(headers: list[DicomHeader]) -> tuple[list[CaseSource], list[tuple[str, str]]]:
    groups: dict[tuple[str, ...], list[DicomHeader]] = defaultdict(list)
    for h in headers:
        if not h.is_dicomdir:
            groups[h.group_key].append(h)
    cases, problems = [], []
    for key, members in groups.items():
        with_pixels = sorted(h.uri for h in members if h.has_pixels)
        where = os.path.commonpath([h.uri for h in members]) if len(members) > 1 else members[0].uri
        if not with_pixels:
            problems.append((where, f"{len(members)} DICOM file(s) of one series without pixel data (not an image)"))
            continue
        if len(with_pixels) < len(members):
            problems.append((where, f"{len(members) - len(with_pixels)} file(s) without pixel data left out of the series"))
        cases.append(CaseSource(case_id_for(key), "dicom", tuple(with_pixels), None, "unlabelled",
                                f"dicom-series:{case_id_for(key)}"))
    return cases, problems


def discover_cases(input_uri: str, storage_options: dict | None = None,
                   ) -> tuple[list[CaseSource], list[tuple[str, str]], dict]:
    """Find the cases under ``input_uri`` -> (cases, problems, info); see the module doc.

    ``cases`` are sorted by case_id; ``problems`` are (file_or_folder, reason) pairs, sorted;
    ``info`` = {"layout": "msd" | "folder" | "dicom", "label_names": {int: str}, "ignored": [relative
    paths of hidden and non-image files]}.
    """
    tree = _Tree(input_uri, storage_options)
    files, hidden = tree.files()
    rels = {tree.rel(p) for p in files}
    is_msd = "dataset.json" in rels or any(r.startswith("imagesTr/") for r in rels)
    if is_msd:
        cases, problems = unique_case_ids(_msd_cases(tree, files))
        used = {u for c in cases for u in (*c.image_uris, c.label_uri) if u}
        used.add(tree.uri(f"{tree.root}/dataset.json"))
        ignored = [tree.rel(p) for p in hidden + [f for f in files if tree.uri(f) not in used]]
        info = {"layout": "msd", "label_names": _label_names(tree, files), "ignored": sorted(ignored)}
        return sorted(cases, key=lambda c: c.case_id), sorted(problems), info
    volume_paths = [p for p in files if image_suffix(p) is not None]
    headers, problems, ignored = [], [], [tree.rel(p) for p in hidden]
    for path in files:
        if image_suffix(path) is not None:
            continue
        if path.lower().endswith(_NOT_IMAGE_SUFFIXES):
            ignored.append(tree.rel(path))
            continue
        try:
            header = _sniff(tree, path)
        except UnreadableInput as exc:
            problems.append((tree.uri(path), exc.reason))
            continue
        if header is not None:
            headers.append(header)
        else:
            ignored.append(tree.rel(path))
    dicom, dicom_problems = _dicom_cases(headers)
    cases, id_problems = unique_case_ids(_file_cases(tree, volume_paths) + dicom)
    layout = "dicom" if dicom and not volume_paths else "folder"
    return (sorted(cases, key=lambda c: c.case_id), sorted(problems + dicom_problems + id_problems),
            {"layout": layout, "label_names": {}, "ignored": sorted(ignored)})
