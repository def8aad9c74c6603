"""The pathology + genomics demo cohort: real formats, and morphology and gene groups that
really carry the planted risk (measured back through medmm's own readers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from medmm.cohort.manifest import Manifest
from medmm.demo.pathology import GENE_GROUPS, oracle_c_index
from medmm.io import feature_bag, read_table, read_wsi


def test_cohort_layout_and_planted_signal(tiny_pathology_cohort):
    root = tiny_pathology_cohort
    manifest = Manifest.load(root)  # leakage-checked on load
    slides = manifest.table[manifest.table["modality"] == "wsi"].sort_values("patient_id")
    truth = pd.read_csv(root / "truth.csv").set_index("case").loc[slides["patient_id"]]
    density = []
    for rel in slides["path"]:
        with read_wsi(manifest.resolve(rel)) as slide:
            assert slide.level_count == 3 and slide.mpp == 0.5
            bag = feature_bag(slide, magnification=20, tile_size=64)
        density.append(bag.features[:, bag.feature_names.index("h_area")].mean())
    assert spearmanr(density, truth["z_path"]).statistic > 0.6  # tile mixture -> nuclear density
    table = read_table(root / "genomics/expression.tsv", gene_groups=root / "genomics/gene_groups.csv")
    assert table.orientation == "features_x_samples" and list(table.groups) == list(GENE_GROUPS)
    onco = table.group_matrix("oncogene").mean(1)
    suppressor = table.group_matrix("tumor_suppressor").mean(1)
    z_gen = pd.read_csv(root / "truth.csv").set_index("case").loc[table.samples, "z_gen"]
    # expected rho ~0.75 (8 genes of 0.8 z_gen + a shared program + noise); 24 patients: allow sampling noise
    assert spearmanr(onco, z_gen).statistic > 0.4 and spearmanr(suppressor, z_gen).statistic < -0.4
    clinical = read_table(root / "clinical/clinical.tsv", numeric=False).values
    assert set(clinical["vital_status"]) <= {"Dead", "Alive"}
    assert 0.6 < oracle_c_index(root, "train") <= 1.0
    assert np.isfinite(truth["eta"]).all()
