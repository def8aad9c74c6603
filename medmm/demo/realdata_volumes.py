"""Real volumes with real masks for segmentation, cut into disjoint slabs.

* CT: the head CT shipped by Debian's ``invesalius-examples`` (``Cranium.inv3``: a tar.gz
  of raw arrays + Apple plists; 108 x 256 x 256 int16, 0.957 x 0.957 x 1.5 mm) with its two
  InVesalius masks: bone (HU 226..3071) and soft tissue (HU -142..2986, which contains
  the bone; here soft tissue = that mask minus bone). Nothing is extracted to disk: the
  archive members are read in memory.
* MR: the MNI152 T1 template of nilearn (1 mm, 197 x 233 x 189) with its grey- and
  white-matter masks. The two masks overlap (about 0.6 M voxels); an overlapping voxel
  goes to the tissue whose probability map (nilearn's GM / WM templates) is higher.

Each volume is reduced to CPU scale (block mean of the image, block majority of the
labels) and cut along the slice axis into slabs; every third slab is a test case, the
rest train (a slab with no signal at all is left out). No voxel is in two slabs, so training and testing never see the same voxels
(they are, however, of one person each: read the figures as within-subject).

Geometry of the CT: the InVesalius matrix is ``[slice, row, column]`` of an axial
series; it is taken as DICOM-like LPS axes (columns toward the patient's left, rows
posterior, slices superior) and converted to RAS+ as :mod:`medmm.io.volume` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medmm.cohort.manifest import Manifest, file_sha256
from medmm.demo.realdata import invesalius_ct_path, load_invesalius_ct, load_invesalius_masks
from medmm.demo.volumes import write_labels_json

__all__ = ["REAL_CLASSES", "RealDataMissing", "find_cranium", "load_invesalius_head_ct", "load_mni152_t1",
           "write_real_volume_cohort"]

REAL_CLASSES = ("background", "bone", "soft tissue", "grey matter", "white matter")
MODALITY_CLASSES = {"ct": ["bone", "soft tissue"], "mr": ["grey matter", "white matter"]}
CRANIUM = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"


class RealDataMissing(RuntimeError):
    """A real data source is not installed here; the message says how to get it."""


def find_cranium(root: str | Path | None = None) -> Path:
    """``Cranium.inv3``: the file, or under an extracted ``invesalius-examples`` package;
    with no ``root``, where ``make invesalius-ct`` keeps it (:func:`invesalius_ct_path`)."""
    hint = "run `make invesalius-ct` (apt-get download invesalius-examples; dpkg -x; Cranium.inv3 to data/cache)"
    root = invesalius_ct_path() if root is None else Path(root)
    if root.is_file():
        if root.suffix == ".inv3":
            return root
        raise RealDataMissing(f"{root}: not a Cranium.inv3 file (a .deb must be extracted first); {hint}")
    for candidate in (root / CRANIUM, root / "examples/Cranium.inv3", root / "Cranium.inv3"):
        if candidate.is_file():
            return candidate
    raise RealDataMissing(f"{root}: no Cranium.inv3 found; {hint}")


def _block_reduce(array: np.ndarray, factors: tuple[int, int, int], labels: bool) -> np.ndarray:
    """Mean (images) or majority (label maps) over non-overlapping blocks; edges cropped."""
    shape = tuple(s // f * f for s, f in zip(array.shape, factors))
    a = array[: shape[0], : shape[1], : shape[2]]
    new = tuple(s // f for s, f in zip(shape, factors))
    blocks = a.reshape(new[0], factors[0], new[1], factors[1], new[2], factors[2])
    if not labels:
        return blocks.mean(axis=(1, 3, 5)).astype(np.float32)
    n = int(a.max()) + 1
    counts = np.stack([(blocks == c).sum(axis=(1, 3, 5)) for c in range(n)])
    return counts.argmax(0).astype(np.uint8)


def _scaled_affine(affine: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Affine of the block-reduced grid: voxel centres move to the block centres."""
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * np.asarray(factors, dtype=np.float64)
    out[:3, 3] = affine[:3, :3] @ ((np.asarray(factors) - 1) / 2.0) + affine[:3, 3]
    return out


def load_invesalius_head_ct(root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (HU image [i, j, k] float32, labels uint8 (1 bone, 2 soft tissue), RAS+ affine)."""
    path = find_cranium(root)
    volume = load_invesalius_ct(path)
    return volume.array, load_invesalius_masks(path), volume.affine


def load_mni152_t1() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (T1 image float32 (template x 1000), labels uint8 (3 grey, 4 white matter), affine)."""
    try:
        from nilearn import datasets
    except ImportError as exc:
        raise RealDataMissing("the MNI152 template needs nilearn (pip install nilearn)") from exc
    t1 = datasets.load_mni152_template(resolution=1)
    gm_mask = datasets.load_mni152_gm_mask(resolution=1).get_fdata() > 0
    wm_mask = datasets.load_mni152_wm_mask(resolution=1).get_fdata() > 0
    gm_p = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    wm_p = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    grey = gm_mask & (~wm_mask | (gm_p >= wm_p))
    white = wm_mask & ~grey
    labels = np.zeros(t1.shape, dtype=np.uint8)
    labels[grey] = 3
    labels[white] = 4
    return (t1.get_fdata() * 1000.0).astype(np.float32), labels, np.asarray(t1.affine, dtype=np.float64)


def slabs(n_slices: int, n_slabs: int) -> list[tuple[int, int]]:
    """Disjoint [start, stop) ranges covering ``n_slices``."""
    edges = np.linspace(0, n_slices, n_slabs + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def slab_split(index: int) -> str:
    return "test" if index % 3 == 1 else "train"


def write_real_volume_cohort(out: str | Path, *, invesalius_root: str | Path | None, ct_factors=(4, 4, 2),
                             mr_factors=(3, 3, 3), n_slabs=6):
    """Write both real volumes as slab cases (NIfTI image + label), manifest and labels.json."""
    import nibabel as nib
    import pandas as pd

    out = Path(out)
    sources = {
        "ct": (load_invesalius_head_ct(invesalius_root), ct_factors),
        "mr": (load_mni152_t1(), mr_factors),
    }
    rows = []
    for modality, ((image, labels, affine), factors) in sources.items():
        image = _block_reduce(image, factors, labels=False)
        labels = _block_reduce(labels, factors, labels=True)
        affine = _scaled_affine(affine, factors)
        for s, (a, b) in enumerate(slabs(image.shape[2], n_slabs)):
            if np.ptp(image[:, :, a:b]) == 0:
                continue  # a slab of empty field of view (the MNI box above the head) is no case
            case = f"{modality}-slab{s}"
            slab_affine = affine.copy()
            slab_affine[:3, 3] = affine[:3, :3] @ np.array([0.0, 0.0, a]) + affine[:3, 3]
            folder = out / modality / case
            folder.mkdir(parents=True, exist_ok=True)
            image_path, label_path = folder / "image.nii.gz", folder / "label.nii.gz"
            nib.save(nib.Nifti1Image(np.rint(image[:, :, a:b]).astype(np.int16), slab_affine), image_path)
            nib.save(nib.Nifti1Image(labels[:, :, a:b], slab_affine), label_path)
            for kind, path in ((modality, image_path), (f"{modality}_seg", label_path)):
                rows.append({"patient_id": case, "study_id": case, "modality": kind,
                             "path": str(path.relative_to(out)), "sha256": file_sha256(path),
                             "split": slab_split(s)})
    manifest = Manifest(out, pd.DataFrame(rows))
    manifest.save()
    write_labels_json(out, REAL_CLASSES, MODALITY_CLASSES,
                      description="real head CT (invesalius-examples) and MNI152 T1 (nilearn), slabs")
    return manifest
