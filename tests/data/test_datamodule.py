import numpy as np
import torch

from medmm.cohort.manifest import Manifest
from medmm.data.augment import augment_ecg, augment_xray, sample_rngs
from medmm.data.config import DataConfig
from medmm.data.datamodule import PretrainDataModule
from medmm.data.decoded_cohort import decode_cohort


def test_decode_caches_and_reloads_identically(tiny_cohort, tmp_path):
    m = Manifest.load(tiny_cohort)
    first = decode_cohort(m, image_size=64, ecg_fs=100, cache_dir=tmp_path, workers=1)
    assert len(list(tmp_path.glob("decoded-*.npz"))) == 1
    second = decode_cohort(m, image_size=64, ecg_fs=100, cache_dir=tmp_path, workers=1)
    assert len(first) == len(second) == 60
    assert first.xray.shape == (60, 1, 64, 64) and first.ecg.shape == (60, 12, 1000)
    np.testing.assert_array_equal(first.xray, second.xray)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert list(first.study_ids) == sorted(first.study_ids)
    # a different preprocessing setting is a different cache entry
    decode_cohort(m, image_size=32, ecg_fs=100, cache_dir=tmp_path, workers=1)
    assert len(list(tmp_path.glob("decoded-*.npz"))) == 2


def test_augmentation_is_reproducible_per_sample_and_epoch():
    images = torch.rand(3, 1, 32, 32)
    a = augment_xray(images, sample_rngs(0, 1, [5, 6, 7]))
    b = augment_xray(images, sample_rngs(0, 1, [5, 6, 7]))
    c = augment_xray(images, sample_rngs(0, 2, [5, 6, 7]))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # a sample is augmented alike in any batch (noise included): alone, or as another batch's first
    torch.testing.assert_close(augment_xray(images[1:2], sample_rngs(0, 1, [6])), a[1:2])
    torch.testing.assert_close(augment_xray(images[[2, 0]], sample_rngs(0, 1, [7, 5])), a[[2, 0]])
    signals = torch.rand(3, 12, 100)
    whole = augment_ecg(signals, sample_rngs(0, 1, [5, 6, 7]))
    torch.testing.assert_close(augment_ecg(signals[2:], sample_rngs(0, 1, [7])), whole[2:])


def test_ecg_augmentation_is_a_global_scale_and_circular_shift_plus_noise():
    t = torch.arange(200, dtype=torch.float32)
    signals = torch.stack([torch.stack([torch.sin(t / 7), 2 * torch.sin(t / 7)])] * 4)  # [4, 2 leads, 200]
    rngs = sample_rngs(0, 1, [0, 1, 2, 3])
    out = augment_ecg(signals, rngs)
    torch.testing.assert_close(out, augment_ecg(signals, sample_rngs(0, 1, [0, 1, 2, 3])))
    assert not torch.equal(signals, out) and out.shape == signals.shape
    for i in range(4):
        # lead 2 = 2 x lead 1 before; one factor for all leads keeps the ratio up to the 0.02 noise
        ratio = (out[i, 1] @ out[i, 0]) / (out[i, 0] @ out[i, 0])
        assert abs(float(ratio) - 2.0) < 0.05
        # the best circular alignment with the input explains it up to amplitude 0.9-1.1 and noise
        best = max(range(200), key=lambda s: float(torch.roll(signals[i, 0], s) @ out[i, 0]))
        scale = float(torch.roll(signals[i, 0], best) @ out[i, 0]) / float(signals[i, 0] @ signals[i, 0])
        assert 0.85 < scale < 1.15


def test_batches_trim_padding_and_mark_presence(tiny_cohort, tmp_path):
    cfg = DataConfig(root=tiny_cohort, image_size=64, batch_size=8, cache_dir=tmp_path)
    dm = PretrainDataModule(cfg, max_tokens=64)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["xray"].shape == (8, 1, 64, 64) and batch["ecg"].shape == (8, 12, 1000)
    lengths = batch["report_mask"].sum(1)
    assert batch["report_ids"].shape[1] == int(lengths.max())  # trimmed to the longest report
    assert torch.all(batch["report_ids"][batch["report_mask"] == 0] == 0)  # [PAD] id
    assert all(bool(p.all()) for p in batch["present"].values())
    # train / val / test never share a patient
    split_of = dict(zip(dm.cohort.study_ids, dm.cohort.splits))
    patients = dm.manifest.studies()
    assert patients.groupby("patient_id")["study_id"].apply(lambda s: len({split_of[x] for x in s})).max() == 1


def test_served_model_inputs_match_the_training_cache(tiny_cohort, tmp_path):
    """The pyfunc model and the training cache share one preprocessing path."""
    from medmm.data.decoded_cohort import load_ecg_input, load_xray_input

    m = Manifest.load(tiny_cohort)
    cohort = decode_cohort(m, image_size=64, ecg_fs=100, cache_dir=tmp_path, workers=1)
    first = m.studies().iloc[0]
    np.testing.assert_array_equal(load_xray_input(m.resolve(first["xray"]), 64).astype(np.float16), cohort.xray[0])
    np.testing.assert_array_equal(load_ecg_input(m.resolve(first["ecg"]), 100).astype(np.float16), cohort.ecg[0])
