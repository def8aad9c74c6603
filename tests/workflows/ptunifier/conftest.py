"""Fixtures for the PTUnifier tests: the tiny config and a tiny model built from it."""

from __future__ import annotations

import pytest
import torch

from medmm.config.core import build_config
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig
from tests.conftest import REPO

PTU_TINY = REPO / "configs/pretrain/ptunifier_tiny.yaml"

REPORTS = ["No pleural effusion. The heart is normal.", "Cardiomegaly with a small left pleural effusion.",
           "Normal chest.", "Pacemaker in place; calcified granuloma in the right upper lobe."]


def ptu_cfg(*overrides: str) -> PTUnifierPretrainConfig:
    return build_config(PTUnifierPretrainConfig, PTU_TINY, list(overrides))


def make_model(*overrides: str):
    from medmm.models.registry import create_model

    cfg = ptu_cfg(*overrides)
    torch.manual_seed(0)
    return create_model("ptunifier", cfg.model, image_size=cfg.data.image_size), cfg


@pytest.fixture(scope="session")
def tokenizer():
    from medmm.models.encoders.text import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def text_batch(tokenizer):
    enc = tokenizer(REPORTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
