"""Real volumes: the InVesalius head CT and its masks (when the Debian package has been
extracted; set MEDMM_INVESALIUS to that folder), the MNI152 T1 with exclusive GM / WM
labels, and slabs that never share a voxel."""

import os
from pathlib import Path

import numpy as np
import pytest

from medmm.demo.realdata_volumes import (
    RealDataMissing,
    find_cranium,
    load_invesalius_head_ct,
    load_mni152_t1,
    slab_split,
    slabs,
)


def invesalius_root() -> Path:
    # $MEDMM_INVESALIUS (an extracted package or the file), else where `make invesalius-ct` keeps it
    try:
        return find_cranium(os.environ.get("MEDMM_INVESALIUS") or None)
    except RealDataMissing as exc:
        pytest.skip(str(exc))


def test_missing_package_is_reported_with_the_way_to_get_it(tmp_path):
    with pytest.raises(RealDataMissing, match="make invesalius-ct"):
        find_cranium(tmp_path)
    deb = tmp_path / "invesalius-examples_3.1.99998-4_all.deb"
    deb.write_bytes(b"!<arch>\n")
    with pytest.raises(RealDataMissing, match="extracted first"):
        find_cranium(deb)


def test_slabs_are_disjoint_and_cover_the_volume():
    ranges = slabs(54, 6)
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(covered, np.arange(54))  # every slice once, none twice
    splits = [slab_split(i) for i in range(6)]
    assert splits.count("test") == 2 and splits.count("train") == 4


def test_head_ct_masks_are_its_hu_thresholds():
    image, labels, affine = load_invesalius_head_ct(invesalius_root())
    assert image.shape == labels.shape == (256, 256, 108)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.957031, 0.957031, 1.5], atol=1e-5)
    # InVesalius' masks are threshold masks: the labels must sit exactly on those voxels
    bone = (image >= 226) & (image <= 3071)
    soft = (image >= -142) & (image <= 2986) & ~bone
    np.testing.assert_array_equal(labels == 1, bone)
    np.testing.assert_array_equal(labels == 2, soft)


def test_mni152_grey_and_white_matter_are_exclusive():
    image, labels, affine = load_mni152_t1()
    assert image.shape == labels.shape == (197, 233, 189)
    assert set(np.unique(labels)) == {0, 3, 4}
    wm, gm = image[labels == 4].mean(), image[labels == 3].mean()
    assert wm > gm  # T1: white matter brighter than grey
    assert affine[0, 0] == 1.0
