"""Writing phantom volumes to disk: NIfTI files (SimpleITK), the MSD ``dataset.json``, and CT
DICOM series (pydicom, CT Image Storage, explicit VR little endian).

DICOM slices are written in the *stored* slice order (IM0001.dcm = array slice 0) with each
slice's ImagePositionPatient along the slice direction, so a reader that sorts by position
recovers the physical volume whatever the stored order. Pixel values are stored unsigned
(HU + 1024, 12 bits) with RescaleSlope 1 / RescaleIntercept -1024. The patient identity is
synthetic ("PHANTOM^CASE0003", "PHX-<seed>-<n>") and exists so de-identification can be tested.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from storage.volume import Volume

DICOM_INTERCEPT = -1024


def write_nifti(volume: Volume, path: str) -> str:
    """Write ``volume`` (array (z, y, x), ITK geometry) as compressed NIfTI; returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), path, True)
    return path


def write_msd_json(folder: str, name: str, description: str, labels: dict[int, str],
                   entries: list[dict[str, str]], extra: dict) -> str:
    """The Medical Segmentation Decathlon ``dataset.json`` for ``entries`` (training list)."""
    doc = {
        "name": name,
        "description": description,
        "reference": "synthetic (phantoms)",
        "licence": "CC0-1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "numTraining": len(entries),
        "numTest": 0,
        "training": entries,
        "test": [],
        "phantom": extra,
    }
    path = os.path.join(folder, "dataset.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    return path


@dataclass(frozen=True)
class DicomIdentity:
    """Synthetic patient/study identity of one series; ``uid_entropy`` makes the UIDs deterministic."""

    patient_name: str
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    study_date: str  # YYYYMMDD
    uid_entropy: tuple[str, ...]

    @classmethod
    def synthetic(cls, dataset_seed: int, case_index: int, case_seed: int, dataset_name: str) -> "DicomIdentity":
        rng = np.random.default_rng([case_seed % (2**63), 7])
        birth = f"{rng.integers(1935, 1995)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        study = f"{rng.integers(2015, 2025)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
        return cls(
            patient_name=f"PHANTOM^CASE{case_index:04d}", patient_id=f"PHX-{dataset_seed}-{case_index}",
            birth_date=birth, sex="MF"[int(rng.integers(0, 2))], study_date=study,
            uid_entropy=("pgl-phantom", dataset_name, str(dataset_seed), str(case_index), str(case_seed)),
        )

    def uid(self, *what: str) -> str:
        return str(generate_uid(entropy_srcs=[*self.uid_entropy, *what]))


def _ds(values: np.ndarray) -> list[str]:
    """Decimal strings of at most 16 characters (DICOM DS)."""
    return [f"{float(v):.10g}" for v in values]


def _series_dataset(image: Volume, who: DicomIdentity) -> Dataset:
    """Tags shared by every slice of the series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Manufacturer = "PGL synthetic phantom"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.PatientName = who.patient_name
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = who.birth_date
    ds.PatientSex = who.sex
    ds.PatientPosition = "HFS"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = who.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"ACC{who.patient_id.replace('-', '')}"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Synthetic abdominal CT phantom"
    ds.StudyInstanceUID = who.uid("study")
    ds.SeriesInstanceUID = who.uid("series")
    ds.FrameOfReferenceUID = who.uid("frame")
    ds.KVP = "120"
    direction = np.asarray(image.direction).reshape(3, 3)
    sx, sy, sz = image.spacing_mm
    ds.ImageOrientationPatient = _ds(np.concatenate([direction[:, 0], direction[:, 1]]))
    ds.PixelSpacing = _ds(np.array([sy, sx]))  # (row spacing = between rows, column spacing)
    ds.SliceThickness = f"{sz:.10g}"
    ds.SpacingBetweenSlices = f"{sz:.10g}"
    ds.Rows, ds.Columns = image.shape_zyx[1], image.shape_zyx[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(DICOM_INTERCEPT), "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def write_dicom_series(image: Volume, folder: str, who: DicomIdentity) -> list[str]:
    """Write ``image`` (int16 HU, (z, y, x)) as one DICOM file per stored slice into ``folder``
    (IM0001.dcm ...). Returns the file paths in stored order."""
    values = np.asarray(image.array)
    if values.min() < DICOM_INTERCEPT or values.max() > 4095 + DICOM_INTERCEPT:
        raise ValueError(f"{folder}: HU range [{values.min()}, {values.max()}] does not fit 12-bit unsigned storage")
    os.makedirs(folder, exist_ok=True)
    ds = _series_dataset(image, who)
    direction = np.asarray(image.direction).reshape(3, 3)
    origin, step = np.asarray(image.origin_mm), direction[:, 2] * image.spacing_mm[2]
    normal = np.cross(direction[:, 0], direction[:, 1])
    stored = (values.astype(np.int32) - DICOM_INTERCEPT).astype(np.uint16)
    paths = []
    for k in range(values.shape[0]):
        position = origin + k * step
        ds.SOPInstanceUID = who.uid("sop", str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(position)
        ds.SliceLocation = f"{float(position @ normal):.10g}"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = os.path.join(folder, f"IM{k + 1:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
