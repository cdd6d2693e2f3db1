"""The random abdominal anatomy of one phantom case: the tissue table and the drawn parameters.

Body frame (mm, LPS axes): origin at the centre of the abdomen (roughly the L1/L2 level), x toward
the patient's left, y toward the back (anterior = -y), z toward the head. ``Anatomy.centre_mm``
places that frame in the scanner's physical LPS space. Drawing parameters (this module) is kept
apart from painting them on a grid (``render``), so the same anatomy can be imaged with any
acquisition. Mean sizes are adult-like; each case varies position, size, orientation and shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from phantoms.shapes import Blob, Waves, random_blob, random_waves

# Tissue ids of the internal tissue map (uint8). Dataset kinds map some of them to labels.
TISSUES: tuple[str, ...] = (
    "air", "subcutaneous_fat", "muscle", "visceral_fat", "lung", "heart", "bowel", "colon",
    "aorta", "inferior_vena_cava", "stomach", "spleen", "kidney_left", "kidney_right", "liver",
    "gallbladder", "liver_tumour", "kidney_tumour", "bone_cancellous", "bone_cortical", "disc",
    "spinal_canal",
)
TISSUE_ID: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}

# Mean Hounsfield units per contrast phase; each case jitters them by a few HU.
# Most public abdominal CT segmentation sets (BTCV, LiTS, KiTS, MSD) are contrast-enhanced,
# mostly portal-venous, so that is the default phase. Sources for the values (adult, ~70 s after
# an iodinated bolus): Bae KT, "Intravenous contrast medium administration and scan timing at CT:
# considerations and approaches", Radiology 2010;256(1):32-61 (aorta, portal venous and hepatic
# enhancement curves); Heiken JP et al., "Dynamic incremental CT: effect of volume and
# concentration of contrast material and patient weight on hepatic enhancement", Radiology
# 1995;195(2):353-357 (hepatic enhancement of ~50 HU above the unenhanced ~55-65 HU). Unenhanced
# values: liver 55-65, spleen 45-50, kidney 30-40, muscle 40-60, fat -100, blood 40-45 HU.
PHASES = ("portal_venous", "non_contrast")
BASE_HU: dict[str, float] = {
    "air": -1000.0, "subcutaneous_fat": -100.0, "muscle": 50.0, "visceral_fat": -90.0, "lung": -850.0,
    "heart": 40.0, "bowel_wall": 40.0, "bowel_fluid": 15.0, "gas": -1000.0, "stool": -60.0, "aorta": 45.0,
    "inferior_vena_cava": 40.0, "stomach_wall": 40.0, "stomach_fluid": 10.0, "spleen": 47.0,
    "kidney_medulla": 32.0, "kidney_cortex": 45.0, "liver": 60.0, "gallbladder": 8.0,
    "bone_cancellous": 330.0, "bone_cortical": 1000.0, "disc": 80.0, "spinal_canal": 15.0,
}
# Portal-venous phase: what contrast changes (the rest as unenhanced). Liver ~105 (enhancement
# ~50 HU), spleen ~115 (homogeneous by 70 s), kidneys cortex ~160 / medulla ~130 (late
# corticomedullary to nephrographic), aorta ~165 and IVC ~135 (venous return), heart blood pool
# ~160, enhancing bowel / stomach walls ~95, muscle ~60.
PORTAL_VENOUS_HU: dict[str, float] = {
    **BASE_HU, "liver": 105.0, "spleen": 115.0, "kidney_cortex": 160.0, "kidney_medulla": 130.0,
    "aorta": 165.0, "inferior_vena_cava": 135.0, "heart": 160.0, "bowel_wall": 95.0, "stomach_wall": 95.0,
    "muscle": 60.0,
}
PHASE_HU = {"portal_venous": PORTAL_VENOUS_HU, "non_contrast": BASE_HU}
# Lesions (mean HU range, necrotic core range): liver metastases are hypoattenuating against the
# enhanced parenchyma; renal cell carcinoma enhances heterogeneously around a necrotic core.
TUMOUR_HU = {"portal_venous": {"liver": (55.0, 75.0), "kidney": ((90.0, 130.0), (10.0, 25.0))},
             "non_contrast": {"liver": (20.0, 40.0), "kidney": ((30.0, 50.0), (5.0, 20.0))}}


def check_phase(phase: str) -> str:
    """``phase`` if it is a known contrast phase, else ValueError naming the choices."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; choose from {PHASES}")
    return phase


@dataclass(frozen=True)
class Body:
    """Elliptic-cylinder trunk: half-width ``a_mm`` (x), half-depth ``b_mm`` (y), layer thicknesses,
    and cos/sin(2θ), cos/sin(3θ) outline coefficients."""

    a_mm: float
    b_mm: float
    fat_mm: float
    muscle_mm: float
    outline: np.ndarray  # (4,)
    widen_per_mm: float  # relative change of the outline per mm of z


@dataclass(frozen=True)
class Spine:
    """Vertebral column along z: vertebral-body centre y, radii, period and phase of the segments."""

    x_mm: float
    y_mm: float
    radii_mm: tuple[float, float]
    period_mm: float
    disc_mm: float
    z0_mm: float


@dataclass(frozen=True)
class Ribs:
    """Rib pairs hugging the wall above ``z_low_mm``: posterior height z0 + k*period, descending
    anteriorly by ``drop_mm``; tube half-sizes radial/axial."""

    z0_mm: float
    period_mm: float
    count: int
    drop_mm: float
    half_mm: tuple[float, float]


@dataclass(frozen=True)
class Tube:
    """A vertical vessel / muscle: centre (x, y), radii (x, y) at z=0, growing by ``grow_per_mm``
    below ``z_top_mm`` (radius scale = 1 + grow * (z_top - z)), present for z in [z_bottom, z_top]."""

    x_mm: float
    y_mm: float
    radii_mm: tuple[float, float]
    z_bottom_mm: float
    z_top_mm: float
    grow_per_mm: float = 0.0


@dataclass(frozen=True)
class Loop:
    """A bowel segment: its blob, gas fraction (0 = all fluid) and whether it is colon (stool)."""

    blob: Blob
    gas: float
    colon: bool


@dataclass(frozen=True)
class Tumour:
    """A lesion: its blob, the tissue it is labelled as, mean HU and texture (HU field)."""

    blob: Blob
    tissue: str
    host: tuple[str, ...]
    mean_hu: float
    texture: Waves
    necrotic_hu: float | None = None


@dataclass(frozen=True)
class Anatomy:
    """All drawn parameters of one case's anatomy (body frame, mm)."""

    centre_mm: np.ndarray
    body: Body
    diaphragm_mm: tuple[float, float]  # dome height right, left
    organs: dict[str, list[Blob]]
    vessels: dict[str, Tube]
    muscles: list[Tube]
    spine: Spine
    ribs: Ribs
    loops: list[Loop]
    hu: dict[str, float]
    textures: dict[str, Waves]
    tumours: list[Tumour] = field(default_factory=list)


def _organs(rng: np.random.Generator) -> dict[str, list[Blob]]:
    """Solid organs as unions of deformed ellipsoids (mean positions of an adult abdomen)."""
    kid = dict(pos_sd_mm=5.0, size_jitter=0.1, roughness=0.07)
    return {
        "liver": [
            random_blob(rng, (-62, -5, 45), (68, 78, 72), roughness=0.14),
            random_blob(rng, (2, -48, 62), (48, 26, 36), angles_deg=(0, 0, -15), roughness=0.12),
        ],
        "spleen": [random_blob(rng, (92, 38, 52), (26, 52, 44), angles_deg=(0, 0, 35), pos_sd_mm=6)],
        "kidney_right": [random_blob(rng, (-70, 50, -22), (27, 24, 52), angles_deg=(10, -12, 20), **kid)],
        "kidney_left": [random_blob(rng, (70, 50, -8), (27, 24, 52), angles_deg=(10, 12, -20), **kid)],
        "stomach": [random_blob(rng, (55, -30, 68), (42, 32, 48), angles_deg=(0, 20, 30), roughness=0.15)],
        "gallbladder": [random_blob(rng, (-45, -45, 0), (15, 14, 34), angles_deg=(25, 0, 0), roughness=0.08)],
        "heart": [random_blob(rng, (15, -35, 175), (70, 55, 60), angles_deg=(0, 0, 25), roughness=0.08)],
    }


def _loops(rng: np.random.Generator) -> list[Loop]:
    """Small-bowel segments in the lower abdomen plus ascending, transverse and descending colon."""
    loops = []
    for _ in range(int(rng.integers(10, 17))):
        centre = (rng.uniform(-85, 85), rng.uniform(-75, 5), rng.uniform(-140, -15))
        radii = (rng.uniform(11, 16), rng.uniform(11, 16), rng.uniform(25, 45))
        angles = tuple(rng.uniform(-90, 90, 3))
        blob = random_blob(rng, centre, radii, angles_deg=angles, pos_sd_mm=0, roughness=0.1)
        loops.append(Loop(blob, float(rng.uniform(0.2, 0.6)) if rng.random() < 0.35 else 0.0, False))
    colon = [((-100, -5, -60), (20, 20, 70), (0, 0, 0)), ((100, 15, -50), (19, 19, 75), (0, 0, 0)),
             ((0, -62, 8), (20, 85, 18), (0, 0, 90))]
    for centre, radii, angles in colon:
        blob = random_blob(rng, centre, radii, angles_deg=angles, roughness=0.1, angle_sd_deg=4)
        loops.append(Loop(blob, float(rng.uniform(0.15, 0.5)), True))
    return loops


def _hu(rng: np.random.Generator, phase: str) -> dict[str, float]:
    hu = {k: v + float(rng.uniform(-3, 3)) for k, v in PHASE_HU[check_phase(phase)].items()}
    hu["air"], hu["gas"] = -1000.0, -1000.0
    hu["bone_cancellous"] = float(rng.uniform(300, 420))
    hu["bone_cortical"] = float(rng.uniform(850, 1150))
    hu["lung"] = float(rng.uniform(-870, -830))
    return hu


def draw_anatomy(rng: np.random.Generator, phase: str = "portal_venous") -> Anatomy:
    """Draw one case's anatomy in a contrast ``phase`` (:data:`PHASES`). The body frame sits at a
    random table position in physical space; the phase changes HU only, never shapes."""
    body = Body(
        a_mm=float(rng.uniform(148, 172)), b_mm=float(rng.uniform(112, 128)),
        fat_mm=float(rng.uniform(10, 28)), muscle_mm=float(rng.uniform(9, 14)),
        outline=rng.normal(0, 0.025, 4), widen_per_mm=float(rng.uniform(0.0, 4e-4)),
    )
    vessels = {
        "aorta": Tube(float(rng.uniform(8, 18)), float(rng.uniform(14, 20)), (11, 11), -150, 400),
        "inferior_vena_cava": Tube(float(rng.uniform(-28, -20)), float(rng.uniform(15, 22)), (12, 9), -150, 400),
    }
    muscles = [
        Tube(side * 36, 48, (6, 6), -400, 20, 0.012) for side in (-1, 1)  # psoas, growing caudally
    ] + [Tube(side * 33, 88, (20, 17), -400, 400) for side in (-1, 1)]  # paraspinal
    return Anatomy(
        centre_mm=np.array([rng.uniform(-15, 15), rng.uniform(-10, 30), rng.uniform(-650, -250)]),
        body=body,
        diaphragm_mm=(float(rng.uniform(100, 118)), float(rng.uniform(88, 106))),
        organs=_organs(rng),
        vessels=vessels,
        muscles=muscles,
        spine=Spine(0.0, float(rng.uniform(40, 48)), (float(rng.uniform(18, 22)), float(rng.uniform(14, 17))),
                    float(rng.uniform(30, 35)), float(rng.uniform(5, 8)), float(rng.uniform(0, 30))),
        ribs=Ribs(float(rng.uniform(10, 30)), float(rng.uniform(24, 29)), 7, float(rng.uniform(40, 60)), (5, 7)),
        loops=_loops(rng),
        hu=_hu(rng, phase),
        textures={"organ": random_waves(rng, 4, (25, 60), 4.0), "organ_fine": random_waves(rng, 6, (5, 12), 6.0), "lung": random_waves(rng, 5, (6, 20), 40.0),
                  "stool": random_waves(rng, 6, (5, 12), 80.0)},
    )


def _inside_point(rng: np.random.Generator, blob: Blob, depth: tuple[float, float]) -> np.ndarray:
    """A point of ``blob`` at normalised depth in ``depth`` along a random direction."""
    u = rng.normal(size=3)
    u /= np.linalg.norm(u)
    return blob.centre_mm + blob.rotation @ (blob.radii_mm * u * rng.uniform(*depth))


def liver_tumours(rng: np.random.Generator, anatomy: Anatomy, phase: str = "portal_venous") -> list[Tumour]:
    """1-3 hypoattenuating liver lesions (:data:`TUMOUR_HU`) inside the main liver lobe."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        centre = _inside_point(rng, anatomy.organs["liver"][0], (0.0, 0.55))
        r = rng.uniform(8, 25)
        blob = random_blob(rng, tuple(centre), (r, r, r), pos_sd_mm=0, size_jitter=0.2, roughness=0.1)
        out.append(Tumour(blob, "liver_tumour", ("liver",), float(rng.uniform(*TUMOUR_HU[phase]["liver"])),
                          random_waves(rng, 3, (6, 15), 5.0)))
    return out


def kidney_tumours(rng: np.random.Generator, anatomy: Anatomy, phase: str = "portal_venous") -> list[Tumour]:
    """One heterogeneous renal mass bulging from a kidney's surface, with a necrotic core."""
    side = "kidney_left" if rng.random() < 0.5 else "kidney_right"
    centre = _inside_point(rng, anatomy.organs[side][0], (0.6, 0.9))
    r = rng.uniform(12, 30)
    blob = random_blob(rng, tuple(centre), (r, r, r), pos_sd_mm=0, size_jitter=0.2, roughness=0.15)
    host = ("kidney_left", "kidney_right", "visceral_fat", "bowel", "colon", "muscle")
    solid, necrotic = TUMOUR_HU[phase]["kidney"]
    return [Tumour(blob, "kidney_tumour", host, float(rng.uniform(*solid)),
                   random_waves(rng, 6, (5, 14), 25.0), necrotic_hu=float(rng.uniform(*necrotic)))]
