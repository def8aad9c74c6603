"""Inputs given by value, one column of a table per input kind (file paths or texts), as a
model batch: what served models and the retrieval index's queries feed a pretrained model."""

from __future__ import annotations

import numpy as np
import torch

from medmm.data.augment import normalise_xray
from medmm.data.decoded_cohort import load_ecg_input, load_xray_input

INPUT_COLUMNS = ("report", "xray", "ecg")


def input_batch(column: str, values: list, cfg, tokenizer) -> dict:
    """Files or texts of one input kind -> the model's batch. ``cfg`` is the pretraining
    config (``model.text.max_tokens``, ``data.image_size``, ``data.ecg_fs``); ``column`` is
    ``report`` (texts), ``xray`` (radiograph files) or ``ecg`` (WFDB / DICOM-waveform files)."""
    if column == "report":
        enc = tokenizer(list(values), padding=True, truncation=True, max_length=cfg.model.text.max_tokens,
                        return_tensors="pt")
        return {"report_ids": enc["input_ids"], "report_mask": enc["attention_mask"]}
    if column == "xray":
        # float32 explicitly: the percentile scaling can promote the pixels to float64
        images = np.stack([load_xray_input(p, cfg.data.image_size) for p in values]).astype(np.float32)
        return {"xray": normalise_xray(torch.from_numpy(images))}
    if column == "ecg":
        signals = np.stack([load_ecg_input(p, cfg.data.ecg_fs) for p in values]).astype(np.float32)
        return {"ecg": torch.from_numpy(signals)}
    raise ValueError(f"unknown input column {column!r}: use report, xray or ecg")


def one_input_column(model_input, columns: tuple[str, ...]) -> str:
    """The name of the one column of ``model_input`` (a DataFrame), which must be one of ``columns``."""
    if model_input.shape[1] != 1 or str(model_input.columns[0]) not in columns:
        raise ValueError(f"give one column per call: {', '.join(columns[:-1])} or {columns[-1]}")
    return str(model_input.columns[0])
