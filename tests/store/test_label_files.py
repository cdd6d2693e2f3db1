"""Label names beside a label map: the ITK-SNAP label description file and the 3D Slicer colour table
parse back (with the formats' own rules) to the model's names and the palette's colours."""

from __future__ import annotations

import re
import shlex

import pytest

from storage.label_files import itksnap_text, label_file_uris, slicer_ctbl_text, write_label_files
from storage.palette import CLASS_COLOURS, colour_of, hex_colour

NAMES = {"0": "background", "1": "liver", "2": "liver tumour", "7": "kidney_left"}


def _itksnap_rows(text: str) -> dict[int, tuple]:
    """ITK-SNAP's reader: '#' lines are comments; IDX R G B A VIS MSH "LABEL"."""
    rows = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = shlex.split(line)
        assert len(fields) == 8, line
        idx, r, g, b = (int(v) for v in fields[:4])
        rows[idx] = ((r, g, b), float(fields[4]), int(fields[5]), int(fields[6]), fields[7])
    return rows


def _ctbl_rows(text: str) -> dict[int, tuple]:
    lines = text.splitlines()
    assert lines[0].startswith("# Color table file")
    assert re.fullmatch(r"# (\d+) values", lines[1])
    rows = {}
    for line in lines[2:]:
        index, name, r, g, b, a = line.split(" ")
        rows[int(index)] = (name, (int(r), int(g), int(b)), int(a))
    assert int(lines[1].split()[1]) == len(rows)
    return rows


def test_itksnap_file_has_every_class_with_its_palette_colour():
    rows = _itksnap_rows(itksnap_text(NAMES))
    assert sorted(rows) == [0, 1, 2, 7]
    assert rows[0] == ((0, 0, 0), 0.0, 0, 0, "Clear Label")
    for value in (1, 2, 7):
        assert rows[value] == (colour_of(value), 1.0, 1, 1, NAMES[str(value)])


def test_slicer_table_has_every_class_with_its_palette_colour():
    rows = _ctbl_rows(slicer_ctbl_text(NAMES))
    assert rows[0] == ("background", (0, 0, 0), 0)
    assert rows[1] == ("liver", colour_of(1), 255)
    assert rows[2] == ("liver_tumour", colour_of(2), 255)  # spaces are not allowed in the format
    assert rows[7] == ("kidney_left", colour_of(7), 255)


def test_files_are_written_beside_the_label_map(tmp_path):
    label_map = tmp_path / "case_01.nii.gz"
    uris = write_label_files(str(label_map), NAMES)
    assert uris == label_file_uris(str(label_map))
    assert uris["itksnap"] == str(tmp_path / "case_01.label_descriptions.txt")
    assert uris["slicer"] == str(tmp_path / "case_01.ctbl")
    assert _itksnap_rows((tmp_path / "case_01.label_descriptions.txt").read_text())[1][4] == "liver"
    assert _ctbl_rows((tmp_path / "case_01.ctbl").read_text())[7][0] == "kidney_left"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_01.ctbl", "case_01.label_descriptions.txt"]


def test_palette_colours_are_distinct_and_stable():
    colours = [colour_of(v) for v in range(1, 60)]
    assert len(set(colours)) == len(colours)
    assert colour_of(0) == (0, 0, 0) and colour_of(1) == CLASS_COLOURS[0]
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    assert hex_colour((230, 25, 75)) == "#e6194b"
    with pytest.raises(ValueError, match="-1"):
        colour_of(-1)


def test_names_need_integer_values():
    with pytest.raises(ValueError, match="integer label values"):
        itksnap_text({"liver": "1"})
