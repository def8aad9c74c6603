"""Dataset, collate and LightningDataModule for paired X-ray / ECG / report studies."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medmm.cohort.manifest import Manifest
from medmm.cohort.splits import verify_before_training
from medmm.config.pretrain import DataConfig
from medmm.data.augment import augment_ecg, augment_xray, normalise_xray, sample_rngs
from medmm.data.decoded_cohort import DecodedCohort, decode_cohort


class StudyDataset(Dataset):
    """Index into a DecodedCohort; returns raw arrays, the collate does the tensor work."""

    def __init__(self, cohort: DecodedCohort, indices: np.ndarray, token_ids: np.ndarray, token_len: np.ndarray):
        self.cohort, self.indices = cohort, indices
        self.token_ids, self.token_len = token_ids, token_len

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


class StudyCollate:
    """Gathers a batch of study indices into tensors; augments when training.

    Returns ``xray`` [B,1,S,S], ``ecg`` [B,12,T], ``report_ids`` / ``report_mask`` [B,L]
    trimmed to the longest report of the batch, ``labels`` [B,F], ``index`` [B] and
    ``present`` (modality -> BoolTensor[B]).
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
        return {
            "xray": normalise_xray(xray),
            "ecg": ecg,
            "report_ids": ids,
            "report_mask": mask,
            "labels": torch.from_numpy(c.labels[idx].astype(np.int64)),
            "index": torch.tensor(idx),
            "present": {m: torch.ones(n, dtype=torch.bool) for m in ("xray", "ecg", "report")},
        }


class PretrainDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, max_tokens: int, seed: int = 0, tokenizer_path: str | None = None):
        super().__init__()
        self.cfg, self.max_tokens, self.seed, self.tokenizer_path = cfg, max_tokens, seed, tokenizer_path
        self.cohort: DecodedCohort | None = None
        self.manifest: Manifest | None = None
        self._collates: list[StudyCollate] = []

    def setup(self, stage: str | None = None) -> None:
        if self.cohort is not None:
            return
        from medmm.models.encoders.text import load_tokenizer

        self.manifest = Manifest.load(self.cfg.root)
        verify_before_training(self.manifest)  # no patient in two splits, before any batch
        cache_dir = self.cfg.cache_dir or Path(self.cfg.root) / ".cache"
        self.cohort = decode_cohort(self.manifest, image_size=self.cfg.image_size, ecg_fs=self.cfg.ecg_fs,
                                    strict=self.cfg.strict, cache_dir=cache_dir, limit=self.cfg.limit_studies)
        tok = load_tokenizer(self.tokenizer_path)
        enc = tok(list(self.cohort.report_text), padding="max_length", truncation=True, max_length=self.max_tokens,
                  return_tensors="np")
        self.token_ids = enc["input_ids"].astype(np.int32)
        self.token_len = enc["attention_mask"].sum(1).astype(np.int64)

    def dataset(self, split: str) -> StudyDataset:
        assert self.cohort is not None, "call setup() first"
        return StudyDataset(self.cohort, self.cohort.indices(split), self.token_ids, self.token_len)

    def loader(self, split: str, *, train: bool = False, batch_size: int | None = None) -> DataLoader:
        ds = self.dataset(split)
        collate = StudyCollate(ds, augment=train and self.cfg.augment, seed=self.seed)
        if train:
            self._collates.append(collate)
        return DataLoader(ds, batch_size=batch_size or self.cfg.batch_size, shuffle=train, drop_last=train,
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
