"""A batch size larger than the training split trains in one batch of the whole split (with a
warning) instead of in no batch; a split smaller than the workflow needs, once unreadable
studies are skipped, is a one-line error naming it."""

from __future__ import annotations

import logging

import pytest

from medmm.data.config import DataConfig
from medmm.data.datamodule import PretrainDataModule
from medmm.io.errors import MedmmInputError

LIMIT = 12  # the first 12 studies: a few per split, decoded in a second


def data_module(cohort, tmp_path, batch_size: int, **kwargs) -> PretrainDataModule:
    cfg = DataConfig(root=cohort, image_size=32, batch_size=batch_size, limit_studies=LIMIT,
                     cache_dir=tmp_path / "cache")
    return PretrainDataModule(cfg, max_tokens=32, **kwargs)


def test_a_batch_larger_than_the_train_split_trains_on_the_whole_split(tiny_cohort, tmp_path, caplog):
    dm = data_module(tiny_cohort, tmp_path, batch_size=1000)
    with caplog.at_level(logging.WARNING, logger="medmm.data"):
        dm.setup()
    n_train = len(dm.cohort.indices("train"))
    assert 2 <= n_train < 1000
    assert dm.train_batch_size == n_train
    batches = list(dm.train_dataloader())
    assert [len(b["index"]) for b in batches] == [n_train]
    assert sorted(batches[0]["index"].tolist()) == sorted(dm.cohort.indices("train").tolist())
    assert f"data.batch_size 1000 is larger than the train split: training in batches of its {n_train} studies" \
        in caplog.text
    # evaluation loaders are not dropped to whole batches: every study once
    assert sum(len(b["index"]) for b in dm.val_dataloader()) == len(dm.cohort.indices("val"))


def test_a_batch_within_the_split_is_kept_and_not_warned_about(tiny_cohort, tmp_path, caplog):
    dm = data_module(tiny_cohort, tmp_path, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="medmm.data"):
        dm.setup()
    assert dm.train_batch_size == 2
    assert all(len(b["index"]) == 2 for b in dm.train_dataloader())
    assert "larger than the train split" not in caplog.text


def test_a_split_smaller_than_needed_is_an_error_naming_it(tiny_cohort, tmp_path):
    probe = data_module(tiny_cohort, tmp_path, batch_size=4)
    probe.setup()
    n_val = len(probe.cohort.indices("val"))
    dm = data_module(tiny_cohort, tmp_path, batch_size=4, min_studies={"train": 2, "val": n_val + 1})
    with pytest.raises(MedmmInputError, match=rf"the val split holds {n_val} readable stud\(ies\); "
                                              rf"at least {n_val + 1} are needed"):
        dm.setup()


def test_a_batch_size_of_zero_is_a_config_error():
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
