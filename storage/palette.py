"""One colour per class, the same everywhere a label map is shown: the ITK-SNAP and 3D Slicer label
files beside a prediction, the DICOM SEG's recommended display colours and the overlay PNGs.

A class's colour depends only on its label value: value 0 (background) is black and transparent,
values 1..20 take the 20 colours of :data:`CLASS_COLOURS` (Kelly's colours of maximum contrast,
without white, black and the greys; a bright first few so that one- and two-class models are easy to
see on a CT), and higher values are drawn from evenly spread hues (golden-ratio steps), so every
value has a colour and neighbours stay apart. Colours are 8-bit (R, G, B).
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterable

RGB = tuple[int, int, int]

BACKGROUND: RGB = (0, 0, 0)
CLASS_COLOURS: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (255, 99, 71),
)
_GOLDEN = 0.618033988749895


def colour_of(value: int) -> RGB:
    """The colour of label ``value`` (0: background, black); ValueError for a negative value."""
    value = int(value)
    if value < 0:
        raise ValueError(f"label value {value}: label values are >= 0")
    if value == 0:
        return BACKGROUND
    if value <= len(CLASS_COLOURS):
        return CLASS_COLOURS[value - 1]
    hue = ((value - len(CLASS_COLOURS)) * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def colours_of(values: Iterable[int]) -> dict[int, RGB]:
    """{value: colour} for the given label values."""
    return {int(v): colour_of(int(v)) for v in values}


def hex_colour(rgb: RGB) -> str:
    """``#rrggbb`` (matplotlib's and the web's notation) of an 8-bit colour."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb)
