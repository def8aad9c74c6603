"""The two MM-Lego tasks, each two modalities of one cohort on its patient-level splits.

- ``pathology_genomics``: survival from a bag of tile features (the block attends over the
  tiles) and genomics (one SNN token per gene group, as CMTA's encoder); discrete-time
  hazard NLL, Harrell's c-index (scikit-survival).
- ``xray_ecg``: finding classification (the report labeler's findings) from the X-ray
  (medmm's X-ray CNN, its pooled features one token) and the ECG (medmm's ECG
  transformer); binary cross-entropy per finding, macro AUROC over the findings with both
  classes in the test split.

A task gives per split the paired rows (both modalities present; every multimodal variant
and every score uses them) and per modality the rows that modality alone trains on (in a
cohort with missing modalities, more than the paired ones).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from medmm.cohort.manifest import Manifest
from medmm.cohort.splits import verify_before_training
from medmm.data.augment import normalise_xray
from medmm.data.config import decoded_cache_folder
from medmm.data.decoded_cohort import decode_cohort
from medmm.data.survival import Standardizer, fixed_size_bags, load_pathology_cohort
from medmm.data.survival_bins import quantile_bins, time_to_bin
from medmm.io.errors import MedmmInputError
from medmm.io.findings import FINDINGS
from medmm.losses import discrete_time_nll
from medmm.metrics.survival import harrell_c
from medmm.metrics.zeroshot import per_finding_auroc
from medmm.models.cmta import snn
from medmm.models.encoders.ecg import build_ecg_encoder
from medmm.models.encoders.xray import build_xray_encoder
from medmm.models.heads.survival import discrete_risk
from medmm.workflows.mmlego.config import MMLegoConfig

SPLITS = ("train", "val", "test")


@dataclass
class Task:
    """One task's data; subclasses say how to read inputs, the loss and the score."""

    name: str
    modalities: tuple[str, str]
    metric: str
    n_outputs: int
    paired: dict[str, np.ndarray]  # split -> rows with both modalities
    alone: dict[str, dict[str, np.ndarray]]  # modality -> split -> rows with that modality
    manifest: Manifest
    skipped: list[dict] = field(default_factory=list)

    def encoders(self) -> list[tuple[int, nn.Module | None]]:
        """A fresh (token width, encoder) per modality."""
        raise NotImplementedError

    def inputs(self, modality: int, rows: np.ndarray, rng: np.random.Generator | None) -> Any:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def score(self, logits: torch.Tensor, rows: np.ndarray) -> float:
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        out = {f"paired.n_{s}": len(r) for s, r in self.paired.items()}
        for m, splits in self.alone.items():
            out.update({f"{m}.n_{s}": len(r) for s, r in splits.items()})
        return out


class GeneGroupTokens(nn.Module):
    """One self-normalising-network token per gene group (CMTA's genomics tokens)."""

    def __init__(self, group_sizes: list[int], dim: int, dropout: float = 0.1):
        super().__init__()
        self.groups = nn.ModuleList(snn(n, dim, dropout) for n in group_sizes)

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([net(g) for net, g in zip(self.groups, groups)], dim=1)


def _split_rows(split: np.ndarray | None, root: Path) -> dict[str, np.ndarray]:
    if split is None:
        raise MedmmInputError(root, "the cohort defines no patient-level split")
    rows = {s: np.flatnonzero(split == s) for s in SPLITS}
    empty = [s for s, r in rows.items() if not len(r)]
    if empty:
        raise MedmmInputError(root, f"the cohort's {'/'.join(empty)} split holds no patient")
    return rows


class PathologyGenomicsTask(Task):
    def __init__(self, cfg: MMLegoConfig):
        c = cfg.pathology_genomics
        # the seed only draws tiles when max_tiles caps them; otherwise every seed shares one bag cache
        data = load_pathology_cohort(c.root, Path(cfg.output_dir) / "bag_cache", c.magnification, c.tile_size,
                                     c.max_tiles, cfg.seed if c.max_tiles else 0, None, c.gene_groups)
        rows = _split_rows(data.split, Path(c.root))
        train = rows["train"]
        tiles = Standardizer().fit(np.concatenate([data.bags[i] for i in train]))
        self.bags = [torch.from_numpy(tiles.transform(b)) for b in data.bags]
        self.groups = [torch.from_numpy(Standardizer().fit(g[train]).transform(g)) for g in data.groups.values()]
        try:
            edges = quantile_bins(data.time[train], data.event[train], c.n_bins)
        except ValueError as exc:
            raise MedmmInputError(c.root, f"training split: {exc}") from None
        self.bins = torch.from_numpy(time_to_bin(data.time, edges))
        self.time, self.event = data.time, data.event
        self.censored = torch.from_numpy(1.0 - data.event.astype(np.float32))
        self.bag_size, self.snn_dim = c.bag_size, c.snn_dim
        modalities = ("pathology", "genomics")
        super().__init__("pathology_genomics", modalities, "harrell_c", c.n_bins, rows,
                         {m: dict(rows) for m in modalities}, data.manifest, data.skipped)

    def encoders(self):
        return [(self.bags[0].shape[1], None),  # the block's own projection embeds each tile
                (self.snn_dim, GeneGroupTokens([g.shape[1] for g in self.groups], self.snn_dim))]

    def inputs(self, modality, rows, rng):
        if modality == 1:
            return [g[rows] for g in self.groups]
        return fixed_size_bags(self.bags, rows, self.bag_size, rng)

    def loss(self, logits, rows):
        return discrete_time_nll(logits, self.bins[rows], self.censored[rows])

    def score(self, logits, rows):
        return harrell_c(self.time[rows], self.event[rows], discrete_risk(logits).numpy())


class XrayEcgTask(Task):
    def __init__(self, cfg: MMLegoConfig):
        c = cfg.xray_ecg
        manifest = Manifest.load(c.root)
        verify_before_training(manifest)  # no patient in two splits, before any batch
        cohort = decode_cohort(manifest, image_size=c.image_size, ecg_fs=c.ecg_fs,
                               cache_dir=decoded_cache_folder(c.root, c.cache_dir))
        labelled = (cohort.labels >= 0).all(axis=1)  # -1: the study has no report to label
        present = {m: cohort.present.get(m, np.ones(len(cohort), bool)) for m in ("xray", "ecg")}
        rng = np.random.default_rng(cfg.seed)
        chosen = {}
        for s in SPLITS:
            rows = np.flatnonzero((cohort.splits == s) & labelled & (present["xray"] | present["ecg"]))
            limit = (c.max_studies or {}).get(s)
            chosen[s] = np.sort(rng.choice(rows, limit, replace=False)) if limit and limit < len(rows) else rows
        paired = {s: r[present["xray"][r] & present["ecg"][r]] for s, r in chosen.items()}
        alone = {m: {s: r[present[m][r]] for s, r in chosen.items()} for m in ("xray", "ecg")}
        for s, r in paired.items():
            if len(r) < 2:
                raise MedmmInputError(c.root, f"the {s} split holds {len(r)} labelled studies with both an X-ray "
                                              "and an ECG; at least 2 are needed")
        self.cohort, self.cfg = cohort, c
        self.labels = torch.from_numpy(cohort.labels.astype(np.float32))
        super().__init__("xray_ecg", ("xray", "ecg"), "macro_auroc", len(FINDINGS), paired, alone, manifest,
                         cohort.skipped)

    def encoders(self):
        xray, ecg = build_xray_encoder(self.cfg.xray, self.cfg.image_size), build_ecg_encoder(self.cfg.ecg)
        return [(xray.out_dim, xray), (ecg.out_dim, ecg)]

    def inputs(self, modality, rows, rng):
        if modality == 0:
            return normalise_xray(torch.from_numpy(self.cohort.xray[rows].astype(np.float32)))
        return torch.from_numpy(self.cohort.ecg[rows].astype(np.float32))

    def loss(self, logits, rows):
        return F.binary_cross_entropy_with_logits(logits, self.labels[rows])

    def score(self, logits, rows):
        with warnings.catch_warnings():  # a finding with one class in the test split is left out of the mean
            warnings.simplefilter("ignore", UserWarning)
            macro = per_finding_auroc(torch.sigmoid(logits).numpy(), self.labels[rows].numpy(), FINDINGS)["macro"]
        return float("nan") if macro is None else float(macro)


TASKS = {"pathology_genomics": PathologyGenomicsTask, "xray_ecg": XrayEcgTask}


def load_task(name: str, cfg: MMLegoConfig) -> Task:
    return TASKS[name](cfg)
