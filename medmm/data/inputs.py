"""Inputs given by value, one column of a table per input kind (file paths or texts), as a
model batch: what served models and the retrieval index's queries feed a pretrained model.

A served model's caller may be a client of a server, so the files it names are read only as
:func:`served_file` allows: bytes are read from memory; a path must resolve (links followed)
inside the folder ``MEDMM_SERVE_ROOT`` names; without that variable, MLflow's scoring server
(``mlflow models serve``) reads no path at all, and only an in-process caller's paths are read."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from medmm.data.augment import normalise_xray
from medmm.data.decoded_cohort import load_ecg_input, load_xray_input
from medmm.io.errors import MedmmInputError

INPUT_COLUMNS = ("report", "xray", "ecg")
SERVE_ROOT_ENV = "MEDMM_SERVE_ROOT"
# set by MLflow's scoring server in the process that serves a model (mlflow.pyfunc.scoring_server)
SCORING_SERVER_ENV = "__pyfunc_model_path__"


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


def served_file(value) -> Path:
    """A file a served model's caller names -> the path that may be read: inside
    ``MEDMM_SERVE_ROOT`` (relative paths are taken from it; ``..`` and links leading outside
    are refused); without that variable, refused inside MLflow's scoring server and taken as
    given in-process."""
    root = os.environ.get(SERVE_ROOT_ENV)
    if not root:
        if os.environ.get(SCORING_SERVER_ENV):
            raise MedmmInputError(value, f"a served model reads no client-named path unless {SERVE_ROOT_ENV} "
                                         "names the folder it may read; send the file's bytes instead")
        return Path(str(value))
    base = Path(root).resolve()
    real = (base / str(value)).resolve()  # an absolute value replaces base; links are followed
    if not real.is_relative_to(base):
        raise MedmmInputError(value, f"outside the folder {SERVE_ROOT_ENV} names: refused")
    return real


def served_input_batch(column: str, values: list, cfg, tokenizer) -> dict:
    """:func:`input_batch` for a served model's caller: texts for ``report``; for ``xray`` and
    ``ecg`` the file's bytes (DICOM / DICOM waveform) or a path :func:`served_file` allows."""
    if column == "report":
        return input_batch(column, values, cfg, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, value in enumerate(values):
            if isinstance(value, (bytes, bytearray, memoryview)):
                files.append(Path(tmp) / f"{column}_{i}.dcm")  # medmm's readers take files
                files[-1].write_bytes(bytes(value))
            else:
                files.append(served_file(value))
        return input_batch(column, files, cfg, tokenizer)
