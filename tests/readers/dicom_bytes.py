"""DICOM Part 10 files crafted byte by byte, for tests that need exact control over the encoding.

``dicom_file`` writes a small CT slice (``BASE``) with changes: any element replaced, removed or
given another VR, raw values (padded, empty, odd-length, invalid), either VR encoding of the
dataset, extra bytes after it. The encoders (functions of ``implicit``) give sequences of defined
and undefined length, private blocks, encapsulated pixel data and trailing padding.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from pydicom.datadict import tag_for_keyword
from pydicom.uid import CTImageStorage

EXPLICIT, IMPLICIT, RLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.5"
BIG, DEFLATE = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
UNDEF = 0xFFFFFFFF
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
ITEM, ITEM_END, SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
Encoder = Callable[[bool], bytes]  # implicit VR? -> encoded element(s)


def tag_of(key: int | str) -> int:
    return key if isinstance(key, int) else tag_for_keyword(key)


def element(key: int | str, vr: str, value: bytes, implicit: bool, length: int | None = None) -> bytes:
    """One encoded element (``length`` overrides the value's length, e.g. UNDEF)."""
    tag, n = tag_of(key), len(value) if length is None else length
    if implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value
    if vr in _LONG:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), n) + value


def delimiter(tag: tuple[int, int], length: int = 0) -> bytes:
    return struct.pack("<HHL", *tag, length)


def sequence(key: int | str, items: list[bytes], implicit: bool, undefined: bool = False,
             undefined_items: bool = False, vr: str = "SQ") -> bytes:
    """A sequence of items, each given as the concatenated bytes of its elements."""
    body = b"".join(delimiter(ITEM, UNDEF) + it + delimiter(ITEM_END) if undefined_items
                    else delimiter(ITEM, len(it)) + it for it in items)
    if undefined:
        return element(key, vr, body + delimiter(SEQ_END), implicit, UNDEF)
    return element(key, vr, body, implicit)


BASE: dict[str, tuple[str, bytes]] = {
    "ImageType": ("CS", b"ORIGINAL\\PRIMARY\\AXIAL "), "SOPClassUID": ("UI", CTImageStorage.encode() + b"\0"),
    "SOPInstanceUID": ("UI", b"1.2.3.4.5.6"), "Modality": ("CS", b"CT"), "StudyInstanceUID": ("UI", b"1.2.3.4"),
    "SeriesInstanceUID": ("UI", b"1.2.3.4.5\0"), "ImagePositionPatient": ("DS", b"-10\\20.5\\30.25 "),
    "ImageOrientationPatient": ("DS", b"1\\0\\0\\0\\1\\0 "), "FrameOfReferenceUID": ("UI", b"1.2.3.9\0"),
    "SamplesPerPixel": ("US", b"\1\0"), "PhotometricInterpretation": ("CS", b"MONOCHROME2 "),
    "Rows": ("US", b"\4\0"), "Columns": ("US", b"\4\0"), "PixelSpacing": ("DS", b"0.7\\0.8 "),
    "BitsAllocated": ("US", b"\x10\0"), "BitsStored": ("US", b"\x0c\0"), "HighBit": ("US", b"\x0b\0"),
    "PixelRepresentation": ("US", b"\1\0"), "RescaleIntercept": ("DS", b"-1024 "), "RescaleSlope": ("DS", b"1 "),
    "PixelData": ("OW", bytes(range(32))),
}


def dicom_file(changes: dict[int | str, Any] | None = None, syntax: str = EXPLICIT,
               meta: dict[str, bytes | None] | None = None, extra: Encoder | None = None) -> bytes:
    """The base slice with ``changes`` (keyword or tag -> (VR, raw value), an Encoder, or None to
    remove it): preamble, meta (explicit VR), the dataset in the syntax's encoding, then ``extra``."""
    implicit = syntax == IMPLICIT
    spec: dict[int, Any] = {tag_of(k): v for k, v in BASE.items()}
    for key, value in (changes or {}).items():
        spec.pop(tag_of(key), None) if value is None else spec.__setitem__(tag_of(key), value)
    values = {"MediaStorageSOPClassUID": CTImageStorage.encode() + b"\0", "MediaStorageSOPInstanceUID": b"1.2.3.4.5.6",
              "TransferSyntaxUID": syntax.encode() + b"\0" * (len(syntax) % 2), **(meta or {})}
    body = element(0x00020001, "OB", b"\0\1", False) + b"".join(
        element(k, "UI", v, False) for k, v in sorted(values.items(), key=lambda kv: tag_of(kv[0])) if v is not None)
    head = b"\0" * 128 + b"DICM" + element(0x00020000, "UL", struct.pack("<L", len(body)), False) + body
    elements = [v(implicit) if callable(v) else element(t, v[0], v[1], implicit) for t, v in sorted(spec.items())]
    return head + b"".join(elements) + (extra(implicit) if extra else b"")


def nested(outer: bool, inner: bool) -> Encoder:
    """A sequence (undefined length and defined-length items when ``outer``) of an item that holds a
    nested sequence (undefined length and items when ``inner``), then an empty item."""
    def encode(implicit: bool) -> bytes:
        code = sequence("PurposeOfReferenceCodeSequence", [element("CodeValue", "SH", b"121311", implicit)],
                        implicit, inner, inner)
        item = element("ReferencedSOPClassUID", "UI", b"1.2.3\0", implicit) + code
        return sequence("ReferencedImageSequence", [item, b""], implicit, outer, not outer)
    return encode


def private(implicit: bool) -> bytes:
    """A private block: creator, a value, and a private sequence of undefined length (in implicit VR
    known by its first item; in explicit VR as UN, whose items are implicit VR, PS3.5 6.2.2)."""
    items = [element(0x00091010, "LO", b"PRIVATE ", True)]
    return (element(0x00090010, "LO", b"ACME 1.0", implicit) + element(0x00091001, "LO", b"anything", implicit)
            + sequence(0x00091002, items, implicit, True, True, vr="SQ" if implicit else "UN"))


def encapsulated(implicit: bool) -> bytes:
    """Encapsulated pixel data: an empty offset table, a fragment holding the bytes of a sequence
    delimiter, another fragment."""
    fragments = delimiter(ITEM, 0) + delimiter(ITEM, 6) + b"\xfe\xff\xdd\xe0\0\0" + delimiter(ITEM, 4) + b"abcd"
    return element("PixelData", "OB", fragments + delimiter(SEQ_END), implicit, UNDEF)


def modality_lut(undefined: bool) -> Encoder:
    return lambda implicit: sequence("ModalityLUTSequence", [element("LUTExplanation", "LO", b"x ", implicit)],
                                     implicit, undefined, undefined)


def padding(implicit: bool) -> bytes:
    return element(0xFFFCFFFC, "OB", b"\0" * 10, implicit)


def twice(key: str) -> Encoder:
    return lambda implicit: 2 * element(key, *BASE[key], implicit)
