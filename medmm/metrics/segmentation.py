"""Dice and HD95 per class through MONAI, with a stated policy for empty structures.

MONAI leaves the empty cases undefined (Dice NaN when the label is empty, HD95 NaN or
inf when either side is empty); averaging then silently drops a missed organ, which
flatters a model that misses it. The policy here:

=====================  ======  ===================================  ============
label has class        pred    Dice                                 HD95 (mm)
=====================  ======  ===================================  ============
yes                    yes     MONAI                                MONAI
yes                    no      0 (missed)                           image diagonal
no                     yes     0 (false positive)                   image diagonal
no                     no      excluded from means (true negative)  excluded
=====================  ======  ===================================  ============

"Image diagonal" is the largest distance two voxels of the image can have (mm): the
worst HD95 possible, so a miss counts as the worst outcome and never as a NaN. Each
score carries its ``status`` so that tables can count misses and false positives.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

POLICY = ("label and prediction present: MONAI Dice / HD95; one of them empty: Dice 0 and HD95 = the image "
          "diagonal in mm (worst case); both empty: excluded from the means")


def image_diagonal_mm(shape, spacing) -> float:
    return float(np.linalg.norm((np.asarray(shape) - 1) * np.asarray(spacing, dtype=np.float64)))


def per_class_scores(pred: np.ndarray, label: np.ndarray, classes: list[int], spacing) -> dict[int, dict]:
    """Scores of one volume: ``{class: {"dice", "hd95", "status"}}``.

    ``pred`` and ``label`` are integer label maps of the same 3-D shape; ``spacing`` the
    voxel size in mm (HD95 is in mm)."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 3:
        raise ValueError(f"pred and label must be 3-D of one shape, got {pred.shape} and {label.shape}")
    diagonal = image_diagonal_mm(label.shape, spacing)
    out: dict[int, dict] = {}
    for c in classes:
        p, g = pred == c, label == c
        has_p, has_g = bool(p.any()), bool(g.any())
        if has_p and has_g:
            yp = torch.from_numpy(p)[None, None].float()
            yg = torch.from_numpy(g)[None, None].float()
            dice = float(compute_dice(yp, yg, include_background=True)[0, 0])
            with warnings.catch_warnings():  # a deprecation notice MONAI raises from inside itself
                warnings.simplefilter("ignore", FutureWarning)
                hd = float(compute_hausdorff_distance(yp, yg, include_background=True, percentile=95,
                                                      spacing=[float(s) for s in spacing])[0, 0])
            out[c] = {"dice": dice, "hd95": hd, "status": "scored"}
        elif has_g:
            out[c] = {"dice": 0.0, "hd95": diagonal, "status": "missed"}
        elif has_p:
            out[c] = {"dice": 0.0, "hd95": diagonal, "status": "false_positive"}
        else:
            out[c] = {"dice": math.nan, "hd95": math.nan, "status": "absent"}
    return out


def summarise(rows: list[dict]) -> list[dict]:
    """Rows ``{variant, modality, class, case, dice, hd95, status}`` -> one row per
    (variant, modality, class): means over the cases that count, with their number and
    the number of misses / false positives."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["modality"], r["class"]), []).append(r)
    out = []
    for (variant, modality, cls), rs in sorted(groups.items()):
        counted = [r for r in rs if r["status"] != "absent"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dice = float(np.mean([r["dice"] for r in counted])) if counted else math.nan
            hd95 = float(np.mean([r["hd95"] for r in counted])) if counted else math.nan
        out.append({"variant": variant, "modality": modality, "class": cls, "dice": dice, "hd95": hd95,
                    "n_cases": len(counted), "n_missed": sum(r["status"] == "missed" for r in rs),
                    "n_false_positive": sum(r["status"] == "false_positive" for r in rs)})
    return out
