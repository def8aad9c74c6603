"""Dataset, collate and LightningDataModule for paired X-ray / ECG / report studies.

A training split smaller than ``data.batch_size`` trains in batches of the whole split (a
warning says so) rather than in none; a split smaller than the workflow's ``min_studies``
after unreadable studies were skipped is a one-line error naming the split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medmm.cohort.manifest import Manifest
from medmm.cohort.splits import verify_before_training
from medmm.data.augment import augment_ecg, augment_xray, normalise_xray, sample_rngs
from medmm.data.config import DataConfig, decoded_cache_folder
from medmm.data.decoded_cohort import DecodedCohort, decode_cohort
from medmm.data.labs_percentiles import LabPercentiles
from medmm.io.errors import MedmmInputError

log = logging.getLogger("medmm.data")


class StudyDataset(Dataset):
    """Index into a DecodedCohort; returns raw arrays, the collate does the tensor work."""

    def __init__(self, cohort: DecodedCohort, indices: np.ndarray, token_ids: np.ndarray, token_len: np.ndarray,
                 labs: np.ndarray | None = None):
        self.cohort, self.indices = cohort, indices
        self.token_ids, self.token_len = token_ids, token_len
        self.labs = labs  # [N, 2L] percentiles + missingness flags, or None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


class StudyCollate:
    """Gathers a batch of study indices into tensors; augments when training.

    Returns ``xray`` [B,1,S,S], ``ecg`` [B,12,T], ``report_ids`` / ``report_mask`` [B,L]
    trimmed to the longest report of the batch, ``labels`` [B,F] (-1 where the report is
    missing), ``index`` [B], ``labs`` [B, 2L] when the cohort has labs, and ``present``
    (modality -> BoolTensor[B]; False where the study lacks that modality).
    """

    def __init__(self, dataset: StudyDataset, augment: bool, seed: int):
        self.ds, self.augment, self.seed, self.epoch = dataset, augment, seed, 0

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        c = self.ds.cohort
        xray = torch.from_numpy(c.xray[idx].astype(np.float32))
        ecg = torch.from_numpy(c.ecg[idx].astype(np.float32))
        if self.augment:
            rngs = sample_rngs(self.seed, self.epoch, idx)
            xray, ecg = augment_xray(xray, rngs), augment_ecg(ecg, rngs)
        length = int(self.ds.token_len[idx].max())
        ids = torch.from_numpy(self.ds.token_ids[idx, :length].astype(np.int64))
        mask = (torch.arange(length)[None, :] < torch.from_numpy(self.ds.token_len[idx])[:, None]).long()
        n = len(idx)
        present = {m: torch.from_numpy(c.present[m][idx]) if m in c.present else torch.ones(n, dtype=torch.bool)
                   for m in ("xray", "ecg", "report")}
        batch = {
            "xray": normalise_xray(xray),
            "ecg": ecg,
            "report_ids": ids,
            "report_mask": mask,
            "labels": torch.from_numpy(c.labels[idx].astype(np.int64)),
            "index": torch.tensor(idx),
            "present": present,
        }
        if self.ds.labs is not None:
            labs = torch.from_numpy(self.ds.labs[idx])
            batch["labs"] = labs
            n_labs = labs.shape[1] // 2
            present["labs"] = labs[:, n_labs:].sum(1) < n_labs  # at least one value measured
        return batch


class PretrainDataModule(L.LightningDataModule):
    """The cohort's studies decoded once, as loaders per split. ``min_studies``: split ->
    the fewest readable studies the workflow trains or evaluates on (checked after decoding,
    when unreadable studies have been skipped)."""

    def __init__(self, cfg: DataConfig, max_tokens: int, seed: int = 0, tokenizer_path: str | None = None,
                 min_studies: Mapping[str, int] | None = None):
        super().__init__()
        self.cfg, self.max_tokens, self.seed, self.tokenizer_path = cfg, max_tokens, seed, tokenizer_path
        self.min_studies = dict(min_studies or {})
        self.cohort: DecodedCohort | None = None
        self.manifest: Manifest | None = None
        self._collates: list[StudyCollate] = []

    def setup(self, stage: str | None = None) -> None:
        if self.cohort is not None:
            return
        from medmm.data.tokenizer import load_tokenizer

        self.manifest = Manifest.load(self.cfg.root)
        verify_before_training(self.manifest)  # no patient in two splits, before any batch
        cache_dir = decoded_cache_folder(self.cfg.root, self.cfg.cache_dir)
        self.cohort = decode_cohort(self.manifest, image_size=self.cfg.image_size, ecg_fs=self.cfg.ecg_fs,
                                    strict=self.cfg.strict, cache_dir=cache_dir, limit=self.cfg.limit_studies)
        tok = load_tokenizer(self.tokenizer_path)
        enc = tok(list(self.cohort.report_text), padding="max_length", truncation=True, max_length=self.max_tokens,
                  return_tensors="np")
        self.token_ids = enc["input_ids"].astype(np.int32)
        self.token_len = enc["attention_mask"].sum(1).astype(np.int64)
        self.labs = self._load_labs()
        self._check_split_sizes()

    def _check_split_sizes(self) -> None:
        skipped = f" after {len(self.cohort.skipped)} unreadable stud(ies) were skipped" if self.cohort.skipped else ""
        for split, minimum in self.min_studies.items():
            n = len(self.cohort.indices(split))
            if n < minimum:
                raise MedmmInputError(self.cfg.root, f"the {split} split holds {n} readable stud(ies){skipped}; "
                                                     f"at least {minimum} are needed")
        if self.cfg.batch_size > self.train_batch_size > 0:
            log.warning("data.batch_size %d is larger than the train split: training in batches of its %d studies",
                        self.cfg.batch_size, self.train_batch_size)

    @property
    def train_batch_size(self) -> int:
        """Studies per training batch: ``data.batch_size``, or the whole training split where
        that is smaller (training drops the last incomplete batch, which would be every batch)."""
        assert self.cohort is not None, "call setup() first"
        return min(self.cfg.batch_size, len(self.cohort.indices("train")))

    def _load_labs(self) -> np.ndarray | None:
        """<root>/labs.csv -> [N, 2L] training-set percentiles + missingness flags (None
        without the file). A study without a labs row counts as all values missing."""
        import pandas as pd

        path = Path(self.cfg.root) / "labs.csv"
        if not path.exists():
            return None
        table = pd.read_csv(path, dtype={"study_id": str})
        absent = sorted(set(self.cfg.lab_columns) - set(table.columns))
        if "study_id" not in table.columns or absent:
            raise MedmmInputError(path, f"labs table lacks column(s) {absent or ['study_id']}")
        values = table.set_index("study_id").reindex(self.cohort.study_ids)[self.cfg.lab_columns]
        values = values.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        percentiles = LabPercentiles.fit(values[self.cohort.indices("train")])
        return percentiles.transform(values)

    def dataset(self, split: str) -> StudyDataset:
        assert self.cohort is not None, "call setup() first"
        return StudyDataset(self.cohort, self.cohort.indices(split), self.token_ids, self.token_len, self.labs)

    def loader(self, split: str, *, train: bool = False, batch_size: int | None = None) -> DataLoader:
        ds = self.dataset(split)
        collate = StudyCollate(ds, augment=train and self.cfg.augment, seed=self.seed)
        if train:
            self._collates.append(collate)
        default = self.train_batch_size if train else self.cfg.batch_size
        return DataLoader(ds, batch_size=batch_size or default or 1, shuffle=train, drop_last=train,
                          collate_fn=collate, num_workers=self.cfg.num_workers,
                          persistent_workers=False,
                          generator=torch.Generator().manual_seed(self.seed) if train else None)

    def set_epoch(self, epoch: int) -> None:
        for collate in self._collates:
            collate.epoch = epoch

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
