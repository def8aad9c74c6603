"""Config of contrastive pretraining, ``python -m medmm.pipelines.pretrain`` (defaults = configs/pretrain/default.yaml)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medmm.config.core import ConfigError, StrictModel
from medmm.data.config import MODALITIES, DataConfig
from medmm.models.more import ModelConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP
from medmm.training.config import TrainerConfig
from medmm.workflows.preflight import (
    PAIRED_TRAINING_MINIMUM,
    CohortNeeds,
    check_before_run,
    decoded_cohort_outputs,
)

log = logging.getLogger("medmm.pretrain")


class LossConfig(StrictModel):
    name: Literal["clip", "symile"] = Field(
        "clip", description="clip: pairwise InfoNCE over `pairs`; symile: multilinear inner product over `modalities`")
    modalities: list[str] = Field(
        [], description="modalities of the Symile loss (default: every modality named in `pairs`)")
    negatives: Literal["n", "n_squared"] = Field(
        "n", description="Symile negatives: n = O(N) independent shuffles; n_squared = all combinations")
    gather: bool = Field(True, description="under DDP, contrast against every process's batch (gathered with "
                                           "gradients, open_clip local_loss semantics)")
    pairs: list[tuple[str, str]] = Field(
        [("xray", "report"), ("ecg", "report"), ("xray", "ecg")], description="modality pairs contrasted by InfoNCE"
    )

    label_aware_weight: float = Field(
        0.0, ge=0.0, le=1.0,
        description="weight of label-aware soft targets: studies whose reports have identical findings are "
                    "not pushed apart as negatives (MedCLIP); 0 = plain InfoNCE")

    same_label_modalities: list[str] = Field(
        [], description="modalities that also get a within-modality supervised contrastive term (SupCon): "
                        "studies with the same findings pulled together, the others apart")
    same_label_weight: float = Field(0.0, ge=0.0, description="weight of that term, added to the pair loss")

    @field_validator("pairs")
    @classmethod
    def _known(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            for m in (a, b):
                if m not in MODALITIES:
                    raise ValueError(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
            if a == b:
                raise ValueError(f"pair ({a}, {b}) contrasts a modality with itself")
        return pairs

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, modalities: list[str]) -> list[str]:
        for m in modalities:
            if m not in MODALITIES:
                raise ValueError(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
        if modalities and len(set(modalities)) < 2:
            raise ValueError("the Symile loss needs at least two distinct modalities")
        return modalities

    @model_validator(mode="after")
    def _same_label_modalities_are_encoded(self) -> "LossConfig":
        extra = sorted(set(self.same_label_modalities) - set(self.used_modalities()))
        if extra:
            raise ValueError(f"same_label_modalities {extra} are not contrasted by this loss "
                             f"(it encodes {', '.join(self.used_modalities())})")
        return self

    def used_modalities(self) -> tuple[str, ...]:
        """The modalities this loss contrasts, sorted."""
        if self.name == "symile" and self.modalities:
            return tuple(sorted(set(self.modalities)))
        return tuple(sorted({m for pair in self.pairs for m in pair}))


class OptimConfig(StrictModel):
    lr: float = 2e-3
    text_lr: float = Field(5e-4, description="learning rate of the LoRA text adapter")
    weight_decay: float = 0.05
    warmup_fraction: float = Field(0.05, description="linear warm-up, as a fraction of all steps")
    min_lr_ratio: float = Field(0.02, description="cosine decay floor relative to lr")




class TrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-pretrain"
    register_model: bool = Field(True, description="register the final model in the MLflow model registry")
    registered_name: str = "medmm-more"


class EvalConfig(StrictModel):
    retrieval_ks: list[int] = [1, 5, 10]
    label_ks: list[int] = [1, 5]
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)
    memory_retrieval: bool = Field(
        True, description="also report label-match retrieval memory-translated through the training pairs "
                          "(medmm.retrieval.memory_retrieval; embeds the training split once more)")


Modality = Literal["xray", "ecg", "report", "labs"]


class PretrainConfig(StrictModel):
    kind: Literal["contrastive"] = Field("contrastive", description="pretraining family: contrastive | ptunifier "
                                         "(the pretrain command picks the schema by it)")
    modalities: list[Modality] | None = Field(
        None, description="modalities the run trains, evaluates and logs. Unset: the cohort's modalities (files in "
                          "its manifest, plus labs where <root>/labs.csv has lab columns) among those the model "
                          "and loss use (model.modalities, loss.pairs / loss.modalities); the loss's pairs, the "
                          "encoders built and the evaluated directions are narrowed to them, so an X-ray + report "
                          "cohort trains X-ray <-> report only. Set: each must be in the cohort and used by the "
                          "loss, else a one-line error before anything is built")
    seed: int = 0
    output_dir: Path = Field(Path("runs/pretrain"), description="checkpoints and local artifacts")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _loss_modalities_are_built(self) -> "PretrainConfig":
        unbuilt = sorted(set(self.loss.used_modalities()) - set(self.model.modalities))
        if unbuilt:
            raise ValueError(f"the loss uses {unbuilt}, which model.modalities {self.model.modalities} lacks")
        return self

    def for_cohort(self, cohort_modalities: Iterable[str], too_few: Mapping[str, str] | None = None
                   ) -> "PretrainConfig":
        """This config narrowed to the modalities of a cohort that holds ``cohort_modalities``
        (the ``modalities`` field's rule): ``modalities`` resolved, and the loss's pairs and
        modalities, its same-label modalities and the model's encoders restricted to them.
        Raises :class:`ConfigError` for an asked-for modality the cohort lacks, or where no
        pair (no two Symile modalities) is left to contrast. ``too_few``: modalities the cohort
        has in too few studies to pair (modality -> why), treated as absent. Idempotent."""
        too_few = dict(too_few or {})
        asked_sparse = [m for m in (self.modalities or []) if m in too_few]
        if asked_sparse:
            reasons = "; ".join(f"{m} is in too few studies ({too_few[m]})" for m in asked_sparse)
            raise ConfigError(f"modalities: {reasons}")
        cohort = [m for m in MODALITIES if m in set(cohort_modalities) and m not in too_few]
        has = ", ".join(cohort) or "none of " + ", ".join(MODALITIES)
        used = set(self.loss.used_modalities())
        if self.modalities is not None:
            lacking = [m for m in self.modalities if m not in cohort]
            if lacking:
                raise ConfigError(f"modalities: the cohort has no {', '.join(lacking)} (it has {has})")
            unused = [m for m in self.modalities if m not in used]
            if unused:
                raise ConfigError(f"modalities: the loss contrasts no {', '.join(unused)} "
                                  f"(it uses {', '.join(sorted(used))}; see loss.pairs)")
            chosen = set(self.modalities)
        else:
            chosen = used & set(cohort)
        pairs = [pair for pair in self.loss.pairs if set(pair) <= chosen]
        if self.loss.name == "symile":
            symile = [m for m in (self.loss.modalities or sorted(used)) if m in chosen]
            if len(symile) < 2:
                raise ConfigError(f"loss.modalities: the Symile loss needs two of its modalities "
                                  f"({', '.join(sorted(used))}) in the cohort, which has {has}")
            resolved = [m for m in MODALITIES if m in symile]
        else:
            if not pairs:
                raise ConfigError(f"loss.pairs: no pair has both modalities in the cohort, which has {has} "
                                  f"(pairs: {', '.join('-'.join(p) for p in self.loss.pairs)})")
            resolved = [m for m in MODALITIES if any(m in pair for pair in pairs)]
            symile = [m for m in self.loss.modalities if m in resolved]
            symile = symile if len(symile) >= 2 else []
        sparse = sorted(m for m in used - set(cohort) if m in too_few)
        missing = sorted(m for m in used - set(cohort) if m not in too_few)
        unpaired = sorted((used & set(cohort)) - set(resolved))
        if (missing or unpaired or sparse) and self.modalities is None:
            why = [f"not in the cohort: {', '.join(missing)}"] if missing else []
            why += [f"in too few studies to pair: {'; '.join(f'{m} ({too_few[m]})' for m in sparse)}"] if sparse else []
            why += [f"in no pair with another of them: {', '.join(unpaired)}"] if unpaired else []
            log.warning("modalities of this run: %s (left out with their pairs and evaluation, %s)",
                        ", ".join(resolved), "; ".join(why))
        data = self.model_dump()
        data["modalities"] = resolved
        data["model"]["modalities"] = [m for m in self.model.modalities if m in resolved]
        data["loss"].update(pairs=pairs, modalities=symile,
                            same_label_modalities=[m for m in self.loss.same_label_modalities if m in resolved])
        return type(self).model_validate(data)


def preflight(cfg: PretrainConfig) -> PretrainConfig:
    """Every check before anything is built (:mod:`medmm.workflows.preflight`), in seconds:
    cohort, modalities, splits, the model's local checkpoints, output and cache folders, tracking
    store; returns the config narrowed to the cohort's modalities (:meth:`PretrainConfig.for_cohort`)."""
    needs = CohortNeeds(cfg.data.root, (), PAIRED_TRAINING_MINIMUM, limit_studies=cfg.data.limit_studies,
                        why="contrastive pretraining")
    facts = check_before_run(cfg.tracking.uri, output_dirs=decoded_cohort_outputs(cfg.data, cfg.output_dir),
                             cohort=needs, model=cfg.model)
    return cfg.for_cohort(facts.modalities, too_few=facts.too_few(MODALITIES, PAIRED_TRAINING_MINIMUM))
