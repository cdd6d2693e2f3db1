"""Uncompressed DICOM pixel data read straight from the file with numpy (the reader's fast path).

Eligible slices: implicit / explicit VR little endian, 16 bits allocated, MONOCHROME2, no
Modality LUT, an integral rescale, and a PixelData element of exactly rows x cols x 2 bytes. The
stored bits are masked (unsigned) or sign-extended (signed) and the rescale applied, which gives
exactly the values GDCM decodes (tests/readers/test_fast_dicom.py checks this against GDCM).
Everything else is decoded by GDCM in ``storage.readers.dicom``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from storage.errors import UnreadableInput
from storage.readers.dicom_header import LeanHeader

RAW_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian


def raw_pixels(ds: Dataset | LeanHeader, shape: tuple[int, int], slope: float,
               intercept: float) -> tuple[int, str, int] | None:
    """Where numpy can read this slice's pixels directly, else None (GDCM decodes it); ``ds`` read
    with deferred pixel data."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in RAW_SYNTAXES or "ModalityLUTSequence" in ds:
        return None
    if slope != round(slope) or intercept != round(intercept):  # float HU: left to GDCM
        return None
    if int(ds.get("BitsAllocated") or 0) != 16 or str(ds.get("PhotometricInterpretation") or "") != "MONOCHROME2":
        return None
    elem = ds.get_item("PixelData", keep_deferred=True)
    offset = getattr(elem, "value_tell", None)
    if offset is None or getattr(elem, "length", None) != shape[0] * shape[1] * 2:
        return None
    bits = int(ds.get("BitsStored") or 16)
    return int(offset), "<i2" if int(ds.get("PixelRepresentation") or 0) == 1 else "<u2", bits if 0 < bits < 16 else 16


def _stored_values(s: Any) -> np.ndarray:
    """The stored values of an uncompressed 16-bit slice, high bits masked / sign-extended."""
    offset, dtype, bits = s.raw  # type: ignore[misc]
    count = s.shape[0] * s.shape[1]
    stored = np.fromfile(s.path, dtype=dtype, count=count, offset=offset)
    if stored.size != count:
        raise UnreadableInput(s.path, f"truncated pixel data: {stored.size} of {count} values")
    if bits < 16 and dtype == "<i2":
        stored = (stored << (16 - bits)) >> (16 - bits)  # sign-extend the stored bits
    elif bits < 16:
        stored &= np.uint16((1 << bits) - 1)
    return stored.reshape(s.shape)


def _fits_int16(s: Any) -> bool:
    """Whether every possible stored value maps into int16 HU (then int16 arithmetic is exact)."""
    _, dtype, bits = s.raw  # type: ignore[misc]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype == "<i2" else (0, (1 << bits) - 1)
    ends = (lo * s.slope + s.intercept, hi * s.slope + s.intercept)
    return -32768 <= min(ends) and max(ends) <= 32767


def decode_raw(s: Any, out: np.ndarray | None = None) -> np.ndarray:
    """A slice's uncompressed 16-bit pixels -> (rows, cols) HU, as GDCM decodes them.

    ``s`` is the reader's slice record (``path``, ``shape``, ``slope``, ``intercept`` and ``raw``
    from :func:`raw_pixels`).
    With ``out`` (int16) the HU go there, clipped to int16; without, an int32 array is returned.
    """
    stored = _stored_values(s)
    if out is not None and _fits_int16(s):  # modular int16 arithmetic, exact since the result fits
        np.copyto(out, stored, casting="unsafe")
        if s.slope != 1.0:
            out *= np.int16(s.slope)
        if s.intercept != 0.0:
            out += np.int16(s.intercept)
        return out
    hu = stored.astype(np.int32) * int(s.slope) + int(s.intercept)
    if out is not None:
        np.clip(hu, -32768, 32767, out=hu)
        out[...] = hu
        return out
    return hu
