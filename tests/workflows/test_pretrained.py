"""One loader of pretrained models for both families: a folder (or its ``artifacts/``) of
``model.safetensors`` + ``config.yaml`` comes back with the family its config names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medmm.config.core import ConfigError, build_config
from medmm.io.errors import MedmmInputError
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.pretrained import (
    CONFIG,
    WEIGHTS,
    build_model,
    file_sha256,
    load_pretrained,
    read_pretrain_config,
    save_pretrained_folder,
)
from tests.conftest import REPO, make_model

TINY_MORE = REPO / "configs/pretrain/tiny.yaml"


@pytest.fixture(scope="module")
def ptunifier_folder(tmp_path_factory):
    model, cfg = make_model()
    return save_pretrained_folder(model, cfg, tmp_path_factory.mktemp("ptunifier")), model


@pytest.fixture(scope="module")
def more_folder(tmp_path_factory):
    cfg = build_config(PretrainConfig, TINY_MORE)
    torch.manual_seed(0)
    model = build_model("more", cfg)
    # the pyfunc model's layout: the files under artifacts/
    return save_pretrained_folder(model, cfg, tmp_path_factory.mktemp("more") / "artifacts"), model


@pytest.mark.parametrize("family", ["more", "ptunifier"])
def test_both_families_load_from_a_folder_by_their_stored_model_name(family, more_folder, ptunifier_folder):
    folder, model = {"more": more_folder, "ptunifier": ptunifier_folder}[family]
    source = folder.parent if family == "more" else folder  # a folder holding artifacts/ resolves too
    loaded = load_pretrained(source)
    assert loaded.kind == family and loaded.config.model.name == family
    assert loaded.weights_sha256 == file_sha256(folder / WEIGHTS) and loaded.source == str(source)
    assert not loaded.model.training and loaded.tokenizer is not None
    mine = loaded.model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(mine[key], value)


def test_a_family_other_than_the_one_asked_for_is_an_error_naming_both(ptunifier_folder):
    folder, _ = ptunifier_folder
    with pytest.raises(MedmmInputError, match=r"'ptunifier'.*'more'"):
        load_pretrained(folder, kind="more")
    assert load_pretrained(folder, kind="ptunifier").kind == "ptunifier"
    with pytest.raises(ConfigError, match="unknown pretraining family 'symile'"):
        load_pretrained(folder, kind="symile")


def test_missing_files_and_unfit_weights_are_clear_input_errors(tmp_path, ptunifier_folder, more_folder):
    with pytest.raises(MedmmInputError, match="no such folder"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(MedmmInputError, match=f"holds no {WEIGHTS}"):
        load_pretrained(tmp_path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / CONFIG).write_text((ptunifier_folder[0] / CONFIG).read_text())
    save_file({"x": torch.zeros(1)}, str(mixed / WEIGHTS))
    with pytest.raises(MedmmInputError, match="weights do not fit the config"):
        load_pretrained(mixed)
    family, cfg = read_pretrain_config(more_folder[0] / CONFIG)
    assert family == "more" and isinstance(cfg, PretrainConfig)
