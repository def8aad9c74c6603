"""CT and MR abdominal phantoms with organ label maps: the segmentation extension of the
demo cohort.

Each case is one synthetic patient scanned once, by CT *or* MR (the two populations are
unpaired: different random anatomy, as in MulModSeg's AMOS setting). Organs are smooth,
randomly deformed blobs placed where they sit in an adult abdomen; their intensities are
those of the modality:

==============  ==================  ===========================
structure       CT (HU, portal      MR (T1-weighted, arbitrary
                venous phase)       units before the bias field)
==============  ==================  ===========================
air             -1000               10
subcut. fat     -100                800
muscle wall     50                  300
other viscera   20 +/- texture      250 +/- texture
liver (1)       100                 520
kidneys (2)     160                 390
spleen (3)      115                 360
vertebral
body (4)        300, cortex 700     560, cortex 80
disc            80                  200
==============  ==================  ===========================

Per case: organ centres jittered by +/-12 mm, sizes by +/-12 %, an in-plane rotation of
+/-10 degrees, a smooth random deformation of every surface, organ intensities by
+/-8 %; then a point-spread blur, Gaussian noise (CT, sigma 12 HU) or Rician noise and
a smooth multiplicative bias field of 0.75-1.25 (MR).

Geometry: ``array[i, j, k]`` on an isotropic grid with the RAS+ affine of
:mod:`medmm.io.volume` (i toward the patient's right, j anterior, k superior), the
volume centred on the world origin. The patient's right (+x) holds the liver, the
left the spleen, the spine is posterior (-y).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmm.cohort.manifest import Manifest, file_sha256, patient_level_split
from medmm.demo.writers import write_dicom_series

__all__ = ["CLASSES", "PhantomCase", "make_phantom", "write_volume_cohort", "write_case"]

CLASSES = ("background", "liver", "kidney", "spleen", "spine")
MODALITIES = ("ct", "mr")

_CT = {"air": -1000, "fat": -100, "muscle": 50, "viscera": 20, "liver": 100, "kidney": 160, "spleen": 115,
       "bone": 300, "cortex": 700, "disc": 80}
_MR = {"air": 10, "fat": 800, "muscle": 300, "viscera": 250, "liver": 520, "kidney": 390, "spleen": 360,
       "bone": 560, "cortex": 80, "disc": 200}


@dataclass(frozen=True)
class PhantomCase:
    image: np.ndarray  # float32 [i, j, k], HU (CT) or T1 units (MR), integer-valued
    label: np.ndarray  # uint8 [i, j, k], index into CLASSES
    affine: np.ndarray  # 4x4 RAS+
    modality: str


def grid_affine(size: int, spacing_mm: float) -> np.ndarray:
    """Isotropic RAS+ affine of a ``size``^3 grid centred on the world origin."""
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -spacing_mm * (size - 1) / 2.0
    return affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-std random field, smooth on a scale of ``sigma_vox`` voxels."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _blob(x, y, z, centre, semi_axes, angle_deg, deform, amplitude=0.18):
    """Inside of a rotated ellipsoid whose surface is pushed in and out by ``deform``."""
    a = np.deg2rad(angle_deg)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = np.cos(a) * dx + np.sin(a) * dy
    v = -np.sin(a) * dx + np.cos(a) * dy
    r = np.sqrt((u / semi_axes[0]) ** 2 + (v / semi_axes[1]) ** 2 + (dz / semi_axes[2]) ** 2)
    return r < 1.0 + amplitude * deform


def make_phantom(modality: str, rng: np.random.Generator, size: int = 48, spacing_mm: float = 6.0) -> PhantomCase:
    """One random abdominal phantom of ``modality`` ("ct" or "mr")."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    affine = grid_affine(size, spacing_mm)
    idx = np.arange(size, dtype=np.float64)
    coords = affine[0, 0] * idx + affine[0, 3]
    x, y, z = np.meshgrid(coords, coords, coords, indexing="ij")
    shape = x.shape
    sigma = max(1.0, 30.0 / spacing_mm)  # deformations on a ~3 cm scale

    def jitter(c):
        return np.asarray(c, dtype=np.float64) + rng.uniform(-12, 12, 3)

    def scale(s):
        return np.asarray(s, dtype=np.float64) * rng.uniform(0.88, 1.12)

    rot = rng.uniform(-10, 10)  # whole-body in-plane rotation
    c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    xr, yr = c * x + s * y, -s * x + c * y
    body_a, body_b = rng.uniform(125, 138), rng.uniform(90, 102)
    body_r = np.sqrt((xr / body_a) ** 2 + (yr / body_b) ** 2)
    body = body_r < 1.0
    fat_depth = rng.uniform(0.08, 0.14)
    muscle = body_r < 1.0 - fat_depth
    inner = body_r < 1.0 - fat_depth - 0.07

    label = np.zeros(shape, dtype=np.uint8)
    liver = _blob(xr, yr, z, jitter((55, 10, 35)), scale((72, 62, 62)), rng.uniform(-15, 15),
                  _smooth_field(rng, shape, sigma))
    liver |= _blob(xr, yr, z, jitter((0, 30, 55)), scale((45, 32, 32)), rng.uniform(-20, 20),
                   _smooth_field(rng, shape, sigma))
    spleen = _blob(xr, yr, z, jitter((-80, -25, 45)), scale((30, 45, 52)), rng.uniform(20, 45),
                   _smooth_field(rng, shape, sigma))
    kidneys = np.zeros(shape, dtype=bool)
    for side in (+1, -1):
        kidneys |= _blob(xr, yr, z, jitter((side * 62, -45, -15 + 10 * (side < 0))), scale((26, 24, 52)),
                         side * rng.uniform(20, 35), _smooth_field(rng, shape, sigma), amplitude=0.12)
    spine_c = np.array([0.0, -58.0]) + rng.uniform(-6, 6, 2)
    spine_r = np.sqrt((xr - spine_c[0]) ** 2 + (yr - spine_c[1]) ** 2)
    spine_radius = rng.uniform(18, 23)
    period, phase = rng.uniform(30, 36), rng.uniform(0, 36)
    disc = np.mod(z + phase, period) < 7.0
    column = spine_r < spine_radius
    vertebra = column & ~disc
    cortex = vertebra & (spine_r > spine_radius - 4.0)

    # Later structures win where blobs overlap; everything stays inside the muscle wall.
    label[inner & liver] = 1
    label[inner & kidneys] = 2
    label[inner & spleen] = 3
    label[muscle & vertebra] = 4

    table = _CT if modality == "ct" else _MR
    vary = {k: v * rng.uniform(0.92, 1.08) if k not in ("air",) else v for k, v in table.items()}
    image = np.full(shape, vary["air"], dtype=np.float64)
    image[body] = vary["fat"]
    image[muscle] = vary["muscle"]
    texture = _smooth_field(rng, shape, 1.0)
    visceral_spread = 20.0 if modality == "ct" else 60.0
    image[inner] = vary["viscera"] + visceral_spread * texture[inner]
    image[label == 1] = vary["liver"]
    image[label == 2] = vary["kidney"]
    image[label == 3] = vary["spleen"]
    image[muscle & column & disc] = vary["disc"]
    image[label == 4] = vary["bone"]
    image[muscle & cortex] = vary["cortex"]

    from scipy.ndimage import gaussian_filter

    image = gaussian_filter(image, 0.6)  # scanner point-spread function: soft edges
    if modality == "ct":
        image = image + rng.normal(0.0, 12.0, shape)
        image = np.clip(image, -1024, 3000)
    else:
        bias = np.exp(0.25 * np.tanh(_smooth_field(rng, shape, size / 3.0)))  # 0.78 .. 1.28
        noise_sd = 20.0
        real = image * bias + rng.normal(0.0, noise_sd, shape)
        imag = rng.normal(0.0, noise_sd, shape)
        image = np.sqrt(real**2 + imag**2)  # magnitude image: Rician noise
    return PhantomCase(np.rint(image).astype(np.float32), label, affine, modality)


def _dicom_as_mr(paths: list[Path]) -> None:
    """Re-label a series written by :func:`write_dicom_series` (a CT writer) as MR."""
    import pydicom

    mr_sop_class = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = mr_sop_class
        ds.file_meta.MediaStorageSOPClassUID = mr_sop_class
        ds.Modality = "MR"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        for keyword in ("KVP", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path, enforce_file_format=True)


def write_case(case: PhantomCase, folder: Path) -> dict[str, Path]:
    """image.nii.gz, label.nii.gz and dicom/ (one file per slice) of one case."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    image_path, label_path, dicom_dir = folder / "image.nii.gz", folder / "label.nii.gz", folder / "dicom"
    nib.save(nib.Nifti1Image(case.image.astype(np.int16), case.affine), image_path)
    nib.save(nib.Nifti1Image(case.label, case.affine), label_path)
    intercept = -1024.0 if case.modality == "ct" else 0.0
    paths = write_dicom_series(case.image, case.affine, dicom_dir, modality="CT", rescale_intercept=intercept)
    if case.modality == "mr":
        _dicom_as_mr(paths)
    return {"image": image_path, "label": label_path, "dicom": dicom_dir}


def write_volume_cohort(out: str | Path, *, n_per_modality: int = 20, size: int = 48, spacing_mm: float = 6.0,
                        seed: int = 0, split_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)):
    """Write the unpaired CT + MR phantom cohort, its manifest and ``labels.json``.

    Layout: ``<modality>/<case>/{image.nii.gz, label.nii.gz, dicom/}``. Manifest rows per
    case: modality ``ct`` / ``mr`` (the NIfTI image), ``ct_seg`` / ``mr_seg`` (the label
    map) and ``ct_dicom`` / ``mr_dicom`` (the DICOM series folder, hashed over its
    slices). Each modality is split by patient on its own, so both have every split.
    """
    import pandas as pd

    out = Path(out)
    rows = []
    for m_index, modality in enumerate(MODALITIES):
        # One stream per case: a case does not change when n_per_modality does.
        cases = [f"{modality}-{i:03d}" for i in range(n_per_modality)]
        split_of = patient_level_split(cases, split_fractions, seed + 17 * m_index)
        for i, case_id in enumerate(cases):
            rng = np.random.default_rng([seed, m_index, i])
            case = make_phantom(modality, rng, size=size, spacing_mm=spacing_mm)
            paths = write_case(case, out / modality / case_id)
            slices = sorted(paths["dicom"].iterdir())
            for kind, path, digest in (
                (modality, paths["image"], file_sha256(paths["image"])),
                (f"{modality}_seg", paths["label"], file_sha256(paths["label"])),
                (f"{modality}_dicom", paths["dicom"], file_sha256(slices[0], tuple(slices[1:]))),
            ):
                rows.append({"patient_id": case_id, "study_id": case_id, "modality": kind,
                             "path": str(path.relative_to(out)), "sha256": digest, "split": split_of[case_id]})
    manifest = Manifest(out, pd.DataFrame(rows))
    manifest.save()
    write_labels_json(out, CLASSES, {m: list(CLASSES[1:]) for m in MODALITIES},
                      description=f"abdominal phantoms, {size}^3 voxels of {spacing_mm} mm")
    return manifest


def write_labels_json(out: Path, classes, modality_classes: dict[str, list[str]], description: str) -> Path:
    """The class list of a volume cohort (index = label value) and, per modality, the
    classes that its label maps annotate (the others are scored as absent)."""
    path = Path(out) / "labels.json"
    path.write_text(json.dumps({"classes": list(classes), "modality_classes": modality_classes,
                                "description": description}, indent=2))
    return path
