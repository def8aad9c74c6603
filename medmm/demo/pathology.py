"""Pathology + genomics extension of the demo cohort, in a TCGA-like layout:

    <out>/slides/<case>.tiff            pyramidal tiled TIFF (20x, 0.5 um/px, 3 levels)
    <out>/genomics/expression.tsv       genes x samples (first column Hugo_Symbol)
    <out>/genomics/gene_groups.csv      long form: group, gene (the six CMTA groups)
    <out>/clinical/clinical.tsv         case_submitter_id, vital_status, days_to_death,
                                        days_to_last_follow_up, age_at_index, gender
    <out>/manifest.parquet              patient-level split; truth.csv: the planted risk

Slides are mosaics of patches cut from a real H&E image (tiatoolbox's target_image.png,
read out of the package wheel) on glass. A patient's pathology risk z_path sets the
share of nuclei-dense patches (tile mixture -> nuclear density); a genomics risk z_gen
moves the oncogene and protein-kinase groups up and the tumour-suppressor group down.
Both enter the hazard, so each modality alone explains part of the risk and their
fusion more. Case IDs are synthetic (DEMO-XXXX); nothing identifies a person.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from medmm.cohort.manifest import Manifest, file_sha256, patient_level_split
from medmm.data.survival import _outcome
from medmm.demo.writers import write_pyramidal_tiff
from medmm.io.errors import CorruptFileError
from medmm.io.wsi import ColorTextureEncoder
from medmm.metrics.survival import harrell_c

HE_MEMBER = "tiatoolbox/data/target_image.png"
DEFAULT_HE_WHEEL = Path("data/cache/tiatoolbox-2.1.3-py3-none-any.whl")
MPP = 0.5  # the slides are written as 20x scans
PATCH = 64  # side of the mosaic patches, pixels

# Small, illustrative member lists for the six functional groups of MCAT / CMTA.
GENE_GROUPS = {
    "tumor_suppressor": ["TP53", "PTEN", "RB1", "CDKN2A", "APC", "BRCA1", "BRCA2", "NF1"],
    "oncogene": ["MYC", "KRAS", "ERBB2", "PIK3CA", "EGFR", "CCND1", "MDM2", "BRAF"],
    "protein_kinase": ["AKT1", "MAPK1", "CDK4", "CDK6", "AURKA", "PLK1", "MTOR", "SRC"],
    "cell_differentiation": ["KRT5", "KRT18", "CDH1", "VIM", "EPCAM", "GATA3", "FOXA1", "SOX2"],
    "transcription_factor": ["ESR1", "FOXM1", "E2F1", "JUN", "FOS", "STAT3", "TWIST1", "SNAI1"],
    "cytokine_growth_factor": ["TGFB1", "VEGFA", "IL6", "TNF", "FGF2", "PDGFB", "CXCL8", "IGF1"],
}
RISK_UP = ("oncogene", "protein_kinase")
RISK_DOWN = ("tumor_suppressor",)


def he_wheel_path(source: str | Path | None = None) -> Path:
    return Path(source or os.environ.get("MEDMM_HE_WHEEL") or DEFAULT_HE_WHEEL)


def load_he_image(source: str | Path | None = None) -> np.ndarray:
    """The real 1000 x 1000 H&E tile (RGB uint8) from the tiatoolbox wheel (or a PNG path)."""
    from PIL import Image

    path = he_wheel_path(source)
    if not path.exists():
        raise FileNotFoundError(f"H&E source {path} not found: run `make data-cache` (it downloads the tiatoolbox "
                                "wheel from the package registry) or set MEDMM_HE_WHEEL")
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                data = zf.read(HE_MEMBER)
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        return np.asarray(Image.open(path).convert("RGB"))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise CorruptFileError(path, f"cannot read the H&E image ({exc})") from None


def patch_library(he: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping patches of the H&E image split by haematoxylin area (nuclear
    density): the densest third and the sparsest third."""
    from skimage.color import rgb2hed

    h = rgb2hed(he)[..., 0] > ColorTextureEncoder.h_threshold
    n = he.shape[0] // PATCH
    patches, density = [], []
    for i in range(n):
        for j in range(n):
            sl = (slice(i * PATCH, (i + 1) * PATCH), slice(j * PATCH, (j + 1) * PATCH))
            patches.append(he[sl])
            density.append(h[sl].mean())
    order = np.argsort(density)
    third = len(order) // 3
    patches = np.stack(patches)
    return patches[order[-third:]], patches[order[:third]]


def _slide_image(dense: np.ndarray, sparse: np.ndarray, p_dense: float, side: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Glass with a blob of tissue made of patches (dense with probability p_dense)."""
    canvas = np.clip(rng.normal(238, 3, (side, side, 3)), 0, 255).astype(np.uint8)
    n = side // PATCH
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    cy, cx = rng.uniform(0.4, 0.6, 2) * n
    ry, rx = rng.uniform(0.3, 0.45, 2) * n
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    for i, j in zip(*np.nonzero(inside)):
        lib = dense if rng.random() < p_dense else sparse
        patch = np.rot90(lib[rng.integers(len(lib))], k=int(rng.integers(4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        canvas[i * PATCH:(i + 1) * PATCH, j * PATCH:(j + 1) * PATCH] = patch
    return canvas


def build_pathology_cohort(out: str | Path, n_patients: int = 240, seed: int = 0, slide_side: int = 512,
                           he_source: str | Path | None = None,
                           split_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25),
                           effect_path: float = 1.0, effect_gen: float = 1.0):
    """Write the cohort; returns its Manifest."""
    out = Path(out)
    for sub in ("slides", "genomics", "clinical"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dense, sparse = patch_library(load_he_image(he_source))
    cases = [f"DEMO-{i:04d}" for i in range(n_patients)]
    z_path, z_gen = rng.normal(size=n_patients), rng.normal(size=n_patients)

    # Genomics: log-expression, each group with its own program; risk groups tied to z_gen.
    genes = [g for gs in GENE_GROUPS.values() for g in gs]
    expr = rng.normal(8.0, 1.0, (n_patients, len(genes)))
    col = 0
    for group, members in GENE_GROUPS.items():
        program = rng.normal(size=n_patients)  # shared, risk-free variation within the group
        sign = 1.0 if group in RISK_UP else -1.0 if group in RISK_DOWN else 0.0
        for _ in members:
            expr[:, col] += 0.6 * program + sign * 0.8 * z_gen
            col += 1
    pd.DataFrame(expr.T, index=pd.Index(genes, name="Hugo_Symbol"), columns=cases).round(4).to_csv(
        out / "genomics/expression.tsv", sep="\t")
    pd.DataFrame([(g, gene) for g, gs in GENE_GROUPS.items() for gene in gs], columns=["group", "gene"]).to_csv(
        out / "genomics/gene_groups.csv", index=False)

    # Outcome: Weibull proportional hazards, independent uniform censoring.
    eta = effect_path * z_path + effect_gen * z_gen
    shape, scale = 1.5, 1500.0
    t_event = scale * (-np.log(rng.uniform(size=n_patients)) / np.exp(eta)) ** (1 / shape)
    t_cens = rng.uniform(300, 3500, n_patients)
    dead = t_event <= t_cens
    t_obs = np.ceil(np.minimum(t_event, t_cens)).astype(int)
    clinical = pd.DataFrame({
        "case_submitter_id": cases,
        "vital_status": np.where(dead, "Dead", "Alive"),
        "days_to_death": [str(t) if d else "'--" for t, d in zip(t_obs, dead)],
        "days_to_last_follow_up": [str(t) if not d else "'--" for t, d in zip(t_obs, dead)],
        "age_at_index": rng.integers(35, 85, n_patients),
        "gender": rng.choice(["female", "male"], n_patients),
    })
    clinical.to_csv(out / "clinical/clinical.tsv", sep="\t", index=False)
    pd.DataFrame({"case": cases, "eta": eta, "z_path": z_path, "z_gen": z_gen}).to_csv(out / "truth.csv", index=False)

    rows = []
    split_of = patient_level_split(cases, split_fractions, seed)
    shared = {m: (p, file_sha256(out / p)) for m, p in (("genomics", "genomics/expression.tsv"),
                                                        ("gene_groups", "genomics/gene_groups.csv"),
                                                        ("clinical", "clinical/clinical.tsv"))}
    for i, case in enumerate(cases):
        p_dense = 1.0 / (1.0 + np.exp(-2.0 * z_path[i]))  # tile mixture follows the pathology risk
        rel = f"slides/{case}.tiff"
        write_pyramidal_tiff(out / rel, _slide_image(dense, sparse, p_dense, slide_side, rng), MPP, n_levels=3,
                             tile=128)
        rows.append((case, case, "wsi", rel, file_sha256(out / rel), split_of[case]))
        for modality, (path, sha) in shared.items():
            rows.append((case, case, modality, path, sha, split_of[case]))
    manifest = Manifest(out, pd.DataFrame(rows, columns=["patient_id", "study_id", "modality", "path", "sha256",
                                                         "split"]))
    manifest.save()
    return manifest


def oracle_c_index(root: str | Path, split: str = "test") -> float:
    """Harrell's C of the planted risk on one split: the ceiling any model can reach."""
    root = Path(root)
    table = Manifest.load(root).table
    cases = sorted(table.loc[(table["split"] == split) & (table["modality"] == "wsi"), "patient_id"])
    truth = pd.read_csv(root / "truth.csv").set_index("case").loc[cases]
    clinical = pd.read_csv(root / "clinical/clinical.tsv", sep="\t").set_index("case_submitter_id").loc[cases]
    time, event = _outcome(clinical, "clinical.tsv")
    return harrell_c(time, event, truth["eta"].to_numpy())
