"""Fitting and predicting one survival model on fixed splits.

Torch models (Cox head, DeepSurv, discrete-time head, CMTA and its single-modality /
concatenation variants) train with Adam and stop early on the loss of an inner
validation split carved from the training patients; the epoch kept is chosen there,
never on the test split. Baselines are scikit-survival's Coxnet (alpha chosen by inner
cross-validation on the training patients) and random survival forest (fixed settings).

Every model returns a risk for the training and test patients and S(t) of the test
patients on the evaluation grid: Cox-type models through Breslow's baseline hazard
(scikit-survival's BreslowEstimator), discrete-time models as a step function over bins.

A plain loop instead of Lightning: the cohorts are a few hundred rows, full-batch steps
take milliseconds and a Trainer's per-step overhead would dominate.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from medmm.data.survival import Standardizer, SurvivalData, fixed_size_bags
from medmm.data.survival_bins import discrete_survival_at, quantile_bins, time_to_bin
from medmm.losses import alignment_l1, cox_partial_nll, discrete_time_nll
from medmm.metrics.survival import harrell_c, structured
from medmm.models import create_model
from medmm.models.cmta import CMTA
from medmm.models.heads.survival import discrete_risk, discrete_survival
from medmm.workflows.survival.config import SurvivalConfig


@dataclass
class Prediction:
    risk_train: np.ndarray
    risk_test: np.ndarray
    surv_test: np.ndarray  # [n_test, n_times]
    info: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None  # the fitted torch model (None for the baselines)
    preprocess: dict[str, np.ndarray] = field(default_factory=dict)  # training statistics, bin edges
    dims: dict = field(default_factory=dict)  # input sizes the model was built from


@dataclass
class Split:
    train: np.ndarray  # indices used to fit (excludes val)
    val: np.ndarray  # inner validation (early stopping / selection)
    test: np.ndarray

    @property
    def train_all(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.val]))


def make_split(data: SurvivalData, cfg: SurvivalConfig) -> Split:
    """Held-out test split (the cohort's own patient-level split when it has one, else a
    seeded split stratified by event); the inner validation split comes from training rows."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data))
    if data.split is not None:
        test = idx[data.split == "test"]
        rest = idx[data.split != "test"]
    else:
        rest, test = train_test_split(idx, test_size=cfg.data.test_fraction, stratify=data.event,
                                      random_state=cfg.seed)
    train, val = train_test_split(rest, test_size=cfg.data.val_fraction, stratify=data.event[rest],
                                  random_state=cfg.seed + 1)
    return Split(np.sort(train), np.sort(val), np.sort(test))


# -- torch models -----------------------------------------------------------------------

class _Inputs:
    """Model inputs of a set of patients, standardised with training statistics."""

    def __init__(self, data: SurvivalData, fit_rows: np.ndarray, bag_size: int):
        self.scalers = {"x": Standardizer().fit(data.x[fit_rows])}
        self.x = torch.from_numpy(self.scalers["x"].transform(data.x))
        self.bags = None
        if data.bags is not None:
            tiles = np.concatenate([data.bags[i] for i in fit_rows])
            scaler = self.scalers["tiles"] = Standardizer().fit(tiles)
            self.bags = [torch.from_numpy(scaler.transform(b)) for b in data.bags]
            self.groups = []
            for name, g in data.groups.items():
                group_scaler = self.scalers[f"group.{name}"] = Standardizer().fit(g[fit_rows])
                self.groups.append(torch.from_numpy(group_scaler.transform(g)))
        self.bag_size = bag_size

    def statistics(self) -> dict[str, np.ndarray]:
        """The training rows' preprocessing statistics (``<input>.median|mean|std``)."""
        return {f"{name}.{stat}": np.asarray(getattr(s, stat), dtype=np.float64)
                for name, s in self.scalers.items() for stat in ("median", "mean", "std")}

    def bag_batch(self, rows: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
        """Fixed-size bags: a random draw of tiles each epoch (training) or a fixed cycle (eval)."""
        return fixed_size_bags(self.bags, rows, self.bag_size, rng)


def model_dims(data: SurvivalData) -> dict:
    """Input sizes a torch survival model is built from (kept with a registered model)."""
    return {"n_features": int(data.x.shape[1]),
            "tile_dim": int(data.bags[0].shape[1]) if data.bags is not None else None,
            "group_sizes": [int(g.shape[1]) for g in data.groups.values()] if data.bags is not None else None}


# The registered model behind each torch model of the workflow; CMTA's comparison models
# are its ``fusion`` setting.
REGISTERED_MODEL = {"cox": "cox", "deepsurv": "deepsurv", "discrete": "discrete_hazard", "cmta": "cmta",
                    "concat": "cmta", "pathology": "cmta", "genomics": "cmta"}


def build_torch_model(name: str, cfg: SurvivalConfig, n_features: int, tile_dim: int | None = None,
                      group_sizes: list[int] | None = None) -> torch.nn.Module:
    """The registered model of the workflow's model ``name``, configured from ``cfg.train``."""
    t = cfg.train
    registered = REGISTERED_MODEL[name]
    if registered == "cmta":
        if tile_dim is None or group_sizes is None:
            raise ValueError(f"{name} needs tile features and gene groups")
        return create_model(registered, {"fusion": name, "dim": t.dim, "heads": t.heads, "dropout": t.dropout,
                                         "n_bins": t.n_bins}, tile_dim=tile_dim, group_sizes=group_sizes)
    settings = {"cox": {}, "deepsurv": {"hidden": t.hidden, "dropout": t.dropout},
                "discrete_hazard": {"hidden": t.hidden, "dropout": t.dropout, "n_bins": t.n_bins}}
    return create_model(registered, settings[registered], n_features=n_features)


def _forward(model, inputs: _Inputs, rows: np.ndarray, rng) -> dict[str, torch.Tensor]:
    if isinstance(model, CMTA):
        bag = inputs.bag_batch(rows, rng) if model.path is not None else None
        groups = [g[rows] for g in inputs.groups] if model.genomics is not None else None
        return model(bag, groups)
    out = model(inputs.x[rows])
    return {"logits": out} if model.kind == "discrete" else {"risk": out}


def _loss(model, out, time, event, bins, alignment_weight: float) -> torch.Tensor:
    if model.kind == "cox":
        return cox_partial_nll(out["risk"], time, event, ties="efron")
    loss = discrete_time_nll(out["logits"], bins, 1.0 - event.float())
    if "P_hat" in out and alignment_weight:
        loss = loss + alignment_weight * (alignment_l1(out["P_hat"], out["P"]) + alignment_l1(out["G_hat"], out["G"]))
    return loss


def fit_predict_torch(name: str, data: SurvivalData, split: Split, cfg: SurvivalConfig,
                      times: np.ndarray) -> Prediction:
    from sksurv.linear_model.coxph import BreslowEstimator

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t = cfg.train
    inputs = _Inputs(data, split.train, cfg.data.bag_size)
    dims = model_dims(data)
    model = build_torch_model(name, cfg, **dims)
    edges = quantile_bins(data.time[split.train], data.event[split.train], t.n_bins)
    time_t = torch.tensor(data.time, dtype=torch.float32)
    event_t = torch.tensor(data.event)
    bins_t = torch.from_numpy(time_to_bin(data.time, edges))
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    is_cmta = isinstance(model, CMTA)
    batch = t.batch_size or (16 if is_cmta else len(split.train))
    best, best_state, best_epoch, waited = float("inf"), None, 0, 0
    for epoch in range(t.epochs):
        model.train()
        order = rng.permutation(split.train)
        for start in range(0, len(order), batch):
            rows = order[start:start + batch]
            if model.kind == "cox" and not data.event[rows].any():
                continue
            out = _forward(model, inputs, rows, rng)
            loss = _loss(model, out, time_t[rows], event_t[rows], bins_t[rows], t.alignment_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = split.val
            val_loss = _loss(model, _forward(model, inputs, val, None), time_t[val], event_t[val], bins_t[val],
                             t.alignment_weight).item()
        if val_loss < best - 1e-4:
            best, best_state, best_epoch, waited = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
            if waited >= t.patience:
                break
    if best_state is not None:  # else the validation loss was never finite: keep the last weights
        model.load_state_dict(best_state)
    model.eval()
    train_all = split.train_all
    with torch.no_grad():
        out_train = _forward(model, inputs, train_all, None)
        out_test = _forward(model, inputs, split.test, None)
    info = {"best_epoch": best_epoch, "val_loss": best, "epochs_run": epoch + 1}
    fitted = {"model": model, "preprocess": {**inputs.statistics(), "bin_edges": np.asarray(edges, float)},
              "dims": dims}
    if model.kind == "cox":
        r_train, r_test = out_train["risk"].numpy(), out_test["risk"].numpy()
        breslow = BreslowEstimator().fit(r_train, data.event[train_all], data.time[train_all])
        surv = np.stack([fn(times) for fn in breslow.get_survival_function(r_test)])
        return Prediction(r_train, r_test, surv, info, **fitted)
    s_test = discrete_survival(out_test["logits"]).numpy()
    return Prediction(discrete_risk(out_train["logits"]).numpy(), discrete_risk(out_test["logits"]).numpy(),
                      discrete_survival_at(s_test, edges, times), info, **fitted)


# -- scikit-survival baselines ----------------------------------------------------------

def fit_predict_baseline(name: str, data: SurvivalData, split: Split, cfg: SurvivalConfig,
                         times: np.ndarray) -> Prediction:
    from sksurv.ensemble import RandomSurvivalForest

    train_all = split.train_all  # baselines select on inner folds of the same training patients
    scaler = Standardizer().fit(data.x[train_all])
    x_train, x_test = scaler.transform(data.x[train_all]), scaler.transform(data.x[split.test])
    y_train = structured(data.time[train_all], data.event[train_all])
    b = cfg.baselines
    if name == "coxnet":
        model, info = _coxnet_inner_cv(x_train, y_train, cfg)
        surv = np.stack([fn(times) for fn in model.predict_survival_function(x_test, alpha=info["alpha"])])
        return Prediction(model.predict(x_train, alpha=info["alpha"]), model.predict(x_test, alpha=info["alpha"]),
                          surv, info)
    elif name == "rsf":
        model = RandomSurvivalForest(n_estimators=b.rsf_trees, min_samples_leaf=b.rsf_min_samples_leaf,
                                     max_features="sqrt", random_state=cfg.seed, n_jobs=1).fit(x_train, y_train)
        info = {}
    else:
        raise ValueError(f"unknown baseline {name!r}")
    surv = np.stack([fn(times) for fn in model.predict_survival_function(x_test)])
    return Prediction(model.predict(x_train), model.predict(x_test), surv, info)


def _coxnet_inner_cv(x: np.ndarray, y: np.ndarray, cfg: SurvivalConfig):
    """Coxnet's alpha by inner K-fold CV on the training patients only (Harrell's C per alpha,
    averaged over folds; one regularisation path per fold), then a refit on all of them."""
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    b = cfg.baselines
    make = lambda **kw: CoxnetSurvivalAnalysis(l1_ratio=b.coxnet_l1_ratio, **kw)  # noqa: E731
    alphas = make(alpha_min_ratio=0.05, n_alphas=30).fit(x, y).alphas_
    scores = np.full((b.inner_folds, len(alphas)), 0.5)
    folds = StratifiedKFold(b.inner_folds, shuffle=True, random_state=cfg.seed)
    for k, (fit_rows, held) in enumerate(folds.split(x, y["event"])):
        try:
            path = make(alphas=alphas).fit(x[fit_rows], y[fit_rows])
        except ArithmeticError:  # the path diverged at small alphas on this fold: keep 0.5
            continue
        for j, a in enumerate(path.alphas_):
            col = int(np.flatnonzero(np.isclose(alphas, a))[0])
            scores[k, col] = harrell_c(y["time"][held], y["event"][held], path.predict(x[held], alpha=a))
    best = float(alphas[int(np.argmax(scores.mean(0)))])
    try:
        model = make(alphas=alphas, fit_baseline_model=True).fit(x, y)
    except ArithmeticError:  # drop the smallest alphas, which the choice did not need
        model = make(alphas=alphas[alphas >= best], fit_baseline_model=True).fit(x, y)
    col = int(np.flatnonzero(np.isclose(model.alphas_, best))[0])
    return model, {"alpha": best, "n_nonzero": int(np.sum(model.coef_[:, col] != 0)),
                   "inner_c": float(scores.mean(0).max())}
