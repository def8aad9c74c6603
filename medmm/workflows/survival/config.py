"""Config of ``python -m medmm.pipelines.survival`` (see configs/survival/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from medmm.config.core import StrictModel
from medmm.tracking.config import RunTrackingConfig

BUNDLED = ("breast_cancer", "gbsg2", "whas500", "veterans_lung_cancer", "aids", "flchain")
TABULAR_MODELS = ("cox", "deepsurv", "discrete")
PATHOLOGY_MODELS = ("cmta", "concat", "pathology", "genomics")
BASELINES = ("coxnet", "rsf")
ModelName = Literal["cox", "deepsurv", "discrete", "cmta", "concat", "pathology", "genomics", "coxnet", "rsf"]


class SurvivalDataConfig(StrictModel):
    dataset: Literal["breast_cancer", "gbsg2", "whas500", "veterans_lung_cancer", "aids", "flchain",
                     "pathology"] = Field("breast_cancer", description="a scikit-survival cohort, or 'pathology' "
                                                                        "(slides + genomics + clinical under root)")
    root: Path = Field(Path("data/demo_pathology"), description="pathology cohort folder (manifest.parquet)")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="held-out test share (bundled cohorts; pathology "
                                                                 "cohorts use the manifest's patient-level split)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training part held out for early "
                                                               "stopping (never the test split)")
    max_rows: int | None = Field(None, description="use a random subset of N patients (smoke tests)")
    magnification: float = Field(20, description="tile magnification for the slides")
    tile_size: int = Field(128, description="tile side in pixels")
    max_tiles: int | None = Field(None, description="tiles embedded per slide (None = all tissue tiles)")
    feature_bags: Path | None = Field(None, description="folder written by python -m medmm.pipelines.tile_features "
                                                        "(bags.csv + bags/): the slides' tile features are read from "
                                                        "its bags (magnification / tile_size / max_tiles are then "
                                                        "the extraction's); None: the hand-made tile encoder")
    bag_size: int = Field(32, description="tiles per bag fed to the pathology encoder (sampled each epoch)")
    gene_groups: Path | None = Field(None, description="gene-group file (long CSV group,gene or a YAML / JSON "
                                                       "mapping) for a pathology cohort whose manifest lists none; "
                                                       "neither: one group of every gene")


class SurvivalTrainConfig(StrictModel):
    epochs: int = Field(200, description="maximum epochs of the torch models")
    patience: int = Field(30, description="early stopping on the inner validation loss")
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = Field(0, description="0 = full batch (tabular); CMTA uses mini-batches of fixed-size bags")
    hidden: list[int] = Field([32], description="hidden widths of DeepSurv / discrete-time MLPs")
    dropout: float = 0.3
    n_bins: int = Field(4, description="discrete-time bins (quantiles of uncensored training times)")
    dim: int = Field(32, description="CMTA token width")
    heads: int = 4
    alignment_weight: float = Field(0.1, description="alpha of the CMTA L1 alignment term")
    threads: int | None = Field(None, description="torch CPU threads")


class BaselineConfig(StrictModel):
    coxnet_l1_ratio: float = Field(0.5, description="elastic-net mix of Coxnet; alpha chosen by inner CV on train")
    inner_folds: int = Field(5, description="folds of the inner CV that selects Coxnet's alpha")
    rsf_trees: int = 200
    rsf_min_samples_leaf: int = 10


class SurvivalEvalConfig(StrictModel):
    n_bootstrap: int = Field(200, description="bootstrap resamples of the test split for CIs")
    ci_level: float = 0.95
    risk_groups: int = Field(2, description="Kaplan-Meier groups cut at quantiles of the training risk")
    n_times: int = Field(20, description="time points of the IBS / AUC grid")


class CrossValidationConfig(StrictModel):
    folds: int = Field(5, ge=2, description="outer folds, stratified by event, over all patients (a cohort's own "
                                            "train / val / test split is then ignored)")
    repeats: int = Field(1, ge=1, description="repetitions of the K-fold partition, each with its own shuffle")
    seed: int = Field(0, description="seed of the outer partitions (repeat r shuffles with seed + r)")


class SurvivalTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-survival"
    register_model: bool = Field(True, description="register a trained torch model in the model registry "
                                                   "(champion: lowest inner-validation loss, the early-stopping "
                                                   "criterion)")
    model_to_register: ModelName | None = Field(None, description="which model of `models` is registered "
                                                                  "(default: the first torch model; baselines "
                                                                  "are not registered)")
    registered_name: str | None = Field(None, description="registered model name (default: medmm-survival-<model>)")


class SurvivalConfig(StrictModel):
    seed: int = 0
    output_dir: Path = Field(Path("runs/survival"), description="local artifacts (feature-bag cache)")
    data: SurvivalDataConfig = SurvivalDataConfig()
    models: list[ModelName] = Field(["cox", "deepsurv", "discrete", "coxnet", "rsf"],
                                    description="models trained and evaluated on the same splits")
    train: SurvivalTrainConfig = SurvivalTrainConfig()
    baselines: BaselineConfig = BaselineConfig()
    eval: SurvivalEvalConfig = SurvivalEvalConfig()
    cv: CrossValidationConfig | None = Field(None, description="repeated stratified K-fold cross-validation instead "
                                                               "of one held-out split: every model is refitted per "
                                                               "fold, with its selection (early stopping, Coxnet "
                                                               "alpha, scaling, bins) inside the fold's training "
                                                               "part; no bootstrap CIs, no model registered; "
                                                               "None: one held-out split")
    tracking: SurvivalTrackingConfig = SurvivalTrackingConfig()

    @model_validator(mode="after")
    def _models_fit_data(self) -> "SurvivalConfig":
        if self.data.dataset != "pathology":
            if self.data.feature_bags is not None:
                raise ValueError("data.feature_bags holds slide tile features: it needs data.dataset=pathology")
            wrong = [m for m in self.models if m in PATHOLOGY_MODELS]
            if wrong:
                raise ValueError(f"models {wrong} need slides and gene groups: use data.dataset=pathology")
        if len(set(self.models)) != len(self.models):
            raise ValueError("a model is listed twice")
        chosen = self.tracking.model_to_register
        if chosen is not None and (chosen not in self.models or chosen in BASELINES):
            raise ValueError(f"tracking.model_to_register={chosen!r} must be a torch model listed in models "
                             f"(not a baseline: {', '.join(BASELINES)})")
        return self

    def model_to_register(self) -> str | None:
        """The torch model whose fit is registered (None: registration off or no torch model)."""
        if not self.tracking.register_model:
            return None
        return self.tracking.model_to_register or next((m for m in self.models if m not in BASELINES), None)
