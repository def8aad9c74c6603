"""Labelled image sets as image-caption pairs: the CSV of one classification dataset read and
checked, its images decoded to the model's input, its labels written as captions in the
modality's style (:mod:`medmm.cohort.captions`) and its patients split train / val / test.

A CSV that cannot be used (missing, no path column, a class column absent, a label other than
1 / 0 / -1 / blank) stops the run before any training with one line naming the file; an image
that cannot be read is skipped and counted (a bad sample never loses a run).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmm.cohort.captions import caption_from_labels, parse_label
from medmm.cohort.manifest import patient_level_split
from medmm.console.progress import progress
from medmm.data.decoded_cohort import load_xray_input
from medmm.io.errors import MedmmInputError
from medmm.workflows.image_text.config import LabelledSetConfig

SPLITS = ("train", "val", "test")


@dataclass
class LabelledSet:
    """The usable images of one labelled set.

    ``labels`` [N, C] float: 1 present, 0 absent, -1 uncertain, NaN unknown."""

    modality: str
    caption_style: str
    classes: list[str]
    images: torch.Tensor  # [N, 1, S, S] float32 in [0, 1]
    labels: np.ndarray
    captions: list[str]
    split: np.ndarray  # [N] "train" / "val" / "test"
    skipped: Counter = field(default_factory=Counter)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def counts(self) -> dict[str, float]:
        counts = {f"{s}_images": float((self.split == s).sum()) for s in SPLITS}
        counts.update({f"skipped.{reason.replace(' ', '_')}": float(n) for reason, n in self.skipped.items()})
        return counts


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MedmmInputError(path, "labels file not found")
    try:
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                           keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedmmInputError(path, f"not a readable CSV ({str(exc).splitlines()[0]})") from None


def _label_matrix(table: pd.DataFrame, classes: list[str], path: Path) -> np.ndarray:
    labels = np.full((len(table), len(classes)), np.nan, dtype=np.float32)
    for c, column in enumerate(classes):
        for i, value in enumerate(table[column]):
            try:
                label = parse_label(value)
            except ValueError as exc:
                raise MedmmInputError(path, f"row {i + 2}, column {column!r}: {exc}") from None
            if label is not None:
                labels[i, c] = label
    return labels


def _load_image(path: Path, image_size: int) -> tuple[np.ndarray | None, str | None]:
    if not path.is_file():
        return None, "missing image"
    try:
        return load_xray_input(path, image_size).astype(np.float32, copy=False), None
    except (MedmmInputError, OSError, ValueError):
        return None, "unreadable image"


@dataclass
class LabelTable:
    """A labelled set's CSV, checked: its rows, class names and label matrix."""

    source: LabelledSetConfig
    table: pd.DataFrame
    classes: list[str]
    labels: np.ndarray


def read_label_table(source: LabelledSetConfig, split_seed: int) -> LabelTable:
    """The CSV of ``source`` read and checked (cheap: no image is opened), ``max_images`` rows
    drawn with ``split_seed``; MedmmInputError naming the file otherwise."""
    path = source.labels
    table = _read_table(path)
    needed = [source.path_column] + ([source.patient_column] if source.patient_column else [])
    absent = [c for c in needed + (source.class_columns or []) if c not in table.columns]
    if absent:
        raise MedmmInputError(path, f"column(s) {absent} not in the header ({list(table.columns)})")
    classes = source.class_columns or [c for c in table.columns if c not in needed]
    if not classes:
        raise MedmmInputError(path, "no class column (every column is the path or the patient)")
    if not len(table):
        raise MedmmInputError(path, "no rows")
    labels = _label_matrix(table, classes, path)  # every row checked, so its row number is the file's
    if source.max_images is not None and len(table) > source.max_images:
        keep = np.sort(np.random.default_rng(split_seed).choice(len(table), source.max_images, replace=False))
        table, labels = table.iloc[keep].reset_index(drop=True), labels[keep]
    return LabelTable(source, table, classes, labels)


def load_labelled_set(checked: LabelTable, image_size: int, split_fractions: tuple[float, float, float],
                      split_seed: int, workers: int = 4) -> LabelledSet:
    """Decode, caption and split one checked labelled set (module docstring)."""
    source, table, classes, labels = checked.source, checked.table, checked.classes, checked.labels
    path = source.labels
    folder = path.parent
    files = [folder / rel for rel in table[source.path_column]]
    with ThreadPoolExecutor(workers) as pool:  # PNG / JPEG decoding releases the GIL
        decoded = list(progress(pool.map(lambda f: _load_image(f, image_size), files),
                                f"{source.modality} images", total=len(files)))
    skipped = Counter(reason for _, reason in decoded if reason)
    usable = np.array([image is not None for image, _ in decoded], dtype=bool)
    if not usable.any():
        raise MedmmInputError(path, f"none of its {len(files)} images could be read ({dict(skipped)})")
    patients = (table[source.patient_column].to_numpy(dtype=str) if source.patient_column
                else np.array([f"row{i}" for i in range(len(table))]))
    split_of = patient_level_split(list(patients[usable]), split_fractions, split_seed)
    rows = np.flatnonzero(usable)
    keys = table[source.path_column].to_numpy(dtype=str)  # the template choice, never logged
    captions = [caption_from_labels(dict(zip(classes, labels[i])), f"{source.modality}\x00{keys[i]}",
                                    source.caption_style) for i in rows]
    return LabelledSet(
        modality=source.modality, caption_style=source.caption_style, classes=classes,
        images=torch.from_numpy(np.stack([decoded[i][0] for i in rows])), labels=labels[rows], captions=captions,
        split=np.array([split_of[p] for p in patients[rows]]), skipped=skipped)
