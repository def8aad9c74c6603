"""CMTA and its comparison variants: shapes, stop-gradient alignment inside the model,
and the risk / survival read-outs of the discrete-time head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmm.data.survival import Standardizer, load_bundled
from medmm.losses import alignment_l1, discrete_time_nll
from medmm.models.cmta import CMTA
from medmm.models.heads.survival import CoxHead, DeepSurv, DiscreteHazardHead, discrete_risk, discrete_survival
from medmm.workflows.survival.config import SurvivalConfig
from medmm.workflows.survival.fit import build_torch_model

GROUPS = [3, 5, 4, 6, 2, 3]


def _inputs(b=3, n=10, f=16):
    torch.manual_seed(0)
    return torch.randn(b, n, f), [torch.randn(b, g) for g in GROUPS]


def test_cmta_alignment_targets_get_no_gradient():
    model = CMTA(16, GROUPS, dim=16, heads=2, n_bins=4)
    bag, groups = _inputs()
    out = model(bag, groups)
    assert out["logits"].shape == (3, 4) and out["P_hat"].shape == out["P"].shape == (3, 16)
    align = alignment_l1(out["P_hat"], out["P"]) + alignment_l1(out["G_hat"], out["G"])
    grads = torch.autograd.grad(align, [out["P"], out["G"], out["P_hat"], out["G_hat"]], allow_unused=True,
                                retain_graph=True)
    assert grads[0] is None and grads[1] is None  # the targets P, G carry no gradient
    assert grads[2].abs().sum() > 0 and grads[3].abs().sum() > 0  # the translations do
    # the translators learn from the alignment term
    align.backward()
    assert model.path_from_genomics.attn.in_proj_weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fusion, has_path, has_gen", [("concat", True, True), ("pathology", True, False),
                                                       ("genomics", False, True)])
def test_comparison_variants(fusion, has_path, has_gen):
    model = CMTA(16, GROUPS, dim=16, heads=2, n_bins=4, fusion=fusion)
    bag, groups = _inputs()
    out = model(bag if has_path else None, groups if has_gen else None)
    assert "P_hat" not in out and out["logits"].shape == (3, 4)
    assert (model.path is not None) == has_path and (model.genomics is not None) == has_gen
    loss = discrete_time_nll(out["logits"], torch.tensor([0, 2, 3]), torch.tensor([0.0, 1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name, kind", [("cox", CoxHead), ("deepsurv", DeepSurv), ("discrete", DiscreteHazardHead),
                                        ("cmta", CMTA), ("concat", CMTA), ("pathology", CMTA), ("genomics", CMTA)])
def test_the_workflow_builds_its_models_through_the_registry_from_its_settings(name, kind):
    cfg = SurvivalConfig(train={"hidden": [6, 5], "dropout": 0.2, "n_bins": 3, "dim": 8, "heads": 2})
    model = build_torch_model(name, cfg, n_features=7, tile_dim=16, group_sizes=GROUPS)
    assert type(model) is kind
    if kind is CMTA:
        assert model.fusion == name and model.head[-1].out_features == 3
        assert model.head[0].in_features == (16 if name in ("cmta", "concat") else 8)
    elif kind is not CoxHead:
        widths = [m.out_features for m in model.net if isinstance(m, torch.nn.Linear)]
        assert widths == [6, 5, 3 if kind is DiscreteHazardHead else 1]
    with pytest.raises(ValueError, match="tile features"):
        build_torch_model("cmta", cfg, n_features=7)


def test_discrete_readouts():
    logits = torch.tensor([[-2.0, -2.0, -2.0, -2.0], [1.0, 1.0, 1.0, 1.0]])
    surv = discrete_survival(logits)
    h = torch.sigmoid(logits)
    torch.testing.assert_close(surv[:, 1], (1 - h[:, 0]) * (1 - h[:, 1]))
    risk = discrete_risk(logits)
    assert risk[1] > risk[0]  # higher hazards -> higher risk
    torch.testing.assert_close(risk, -surv.sum(1))


@pytest.mark.parametrize("name", ["breast_cancer", "gbsg2", "whas500", "veterans_lung_cancer", "aids", "flchain"])
def test_bundled_cohorts_load_as_numeric_arrays(name):
    data = load_bundled(name)
    assert data.x.ndim == 2 and len(data.time) == len(data.event) == data.x.shape[0]
    assert data.x.dtype == np.float64 and (data.time >= 0).all() and 0 < data.event.mean() < 1  # flchain has t=0
    x = Standardizer().fit(data.x).transform(data.x)
    assert np.isfinite(x).all()  # missing values (flchain) imputed with training medians
