"""What a class name means in DICOM: the segmented property category and type of a DICOM SEG segment.

DICOM requires both as codes (CID 7150 categories, CID 7151 types). From a class name such as
``liver``, ``kidney_left`` or ``liver_tumour``:

- a name with ``tumour`` / ``tumor`` / ``lesion`` / ``mass`` / ``cancer`` / ``metastasis`` is a
  Morphologically Abnormal Structure (SCT 49755003) of type Neoplasm (SCT 108369006);
- otherwise it is an Anatomical Structure (SCT 91723000) whose type is the SNOMED CT code pydicom
  knows under the name's words without laterality (``kidney_left`` -> Kidney 64033007,
  ``inferior_vena_cava`` -> Inferior vena cava 64131007);
- a name pydicom does not know gets a local code (coding scheme ``99PGL``, value ``PGL<label value>``,
  meaning the class name). The class name itself is always the segment's label.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LOCAL_SCHEME = "99PGL"
_ABNORMAL_WORDS = {"tumour", "tumor", "lesion", "lesions", "mass", "cancer", "metastasis", "metastases"}
_LATERALITY_WORDS = {"left", "right", "l", "r"}


def _words(name: str) -> list[str]:
    return [w for w in name.replace("-", "_").replace(" ", "_").lower().split("_") if w]


def _snomed(words: list[str]) -> Code | None:
    key = "".join(w.capitalize() for w in words)
    if not key.isidentifier():
        return None
    try:
        found = getattr(codes.SCT, key)
    except AttributeError:
        return None
    return found if isinstance(found, Code) else None


def property_codes(name: str, value: int) -> tuple[Code, Code]:
    """(category, type) codes of class ``name`` with label ``value``; see the module doc."""
    words = _words(name)
    if _ABNORMAL_WORDS & set(words):
        return codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    known = _snomed([w for w in words if w not in _LATERALITY_WORDS])
    local = Code(value=f"PGL{int(value)}", scheme_designator=LOCAL_SCHEME, meaning=name[:64] or f"class {value}")
    return codes.cid7150.AnatomicalStructure, known or local
