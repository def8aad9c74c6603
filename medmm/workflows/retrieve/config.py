"""Config of ``python -m medmm.pipelines.retrieve`` (defaults = configs/retrieve/default.yaml)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field

from medmm.config.core import ConfigError, StrictModel
from medmm.data.config import DataConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.tracking.figures import EXAMPLES_FIGURE_HELP
from medmm.workflows.pretrained import PretrainedConfig

IndexModality = Literal["xray", "ecg", "report"]


class IndexConfig(StrictModel):
    path: Path = Field(Path("runs/retrieval-index"), description="folder of the persistent index")
    modalities: list[IndexModality] | None = Field(
        None, description="one index per modality, all in the shared embedding space. Unset: every modality the "
                          "pretrained model encodes and the cohort holds (a model pretrained on X-ray + report "
                          "indexes those two); set: each must be both, else a one-line error before anything "
                          "is embedded")
    exact_max: int = Field(50_000, description="up to this many studies the index is exact (flat inner product)")
    approximate: Literal["hnsw", "ivf"] = Field("hnsw", description="index past exact_max studies")
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = Field(None, description="IVF cells (None: 4 sqrt(n))")
    ivf_nprobe: int = 16

    def resolve(self, model_has: Iterable[str], cohort_has: Iterable[str]) -> tuple[str, ...]:
        """The modalities indexed (``modalities``' rule): those asked for, in their order, or
        the model's and cohort's shared ones in the order of ``IndexModality``.
        Raises :class:`ConfigError` for an asked-for modality the model has no encoder for or
        the cohort lacks, and where the two share none."""
        model_has, cohort_has = set(model_has), set(cohort_has)
        known = get_args(IndexModality)
        model_list = ", ".join(m for m in known if m in model_has) or "none of " + ", ".join(known)
        if self.modalities is not None:
            lacking = [m for m in self.modalities if m not in model_has]
            if lacking:
                raise ConfigError(f"index.modalities: the pretrained model has no {', '.join(lacking)} encoder "
                                  f"(it encodes {model_list})")
            absent = [m for m in self.modalities if m not in cohort_has]
            if absent:
                raise ConfigError(f"index.modalities: the cohort has no {', '.join(absent)} "
                                  f"(it has {', '.join(sorted(cohort_has)) or 'no files'})")
            return tuple(dict.fromkeys(self.modalities))
        chosen = tuple(m for m in known if m in model_has and m in cohort_has)
        if not chosen:
            raise ConfigError(f"index.modalities: the pretrained model encodes {model_list}, of which the cohort "
                              f"has none (it has {', '.join(sorted(cohort_has)) or 'no files'})")
        return chosen


class QueryConfig(StrictModel):
    k: int = Field(5, ge=1, description="studies returned per query")
    against: Literal["xray", "ecg", "report"] = Field(
        "report", description="which modality's index a query searches (the space is shared)")


class RetrieveTrackingConfig(RunTrackingConfig):
    experiment: str = "medmm-retrieve"


class RetrieveConfig(StrictModel):
    seed: int = 0
    pretrained: PretrainedConfig = PretrainedConfig(source="models:/medmm-more@champion")
    data: DataConfig = Field(DataConfig(augment=False), description="cohort; image_size / ecg_fs follow the model")
    index: IndexConfig = IndexConfig()
    query: QueryConfig = QueryConfig()
    tracking: RetrieveTrackingConfig = RetrieveTrackingConfig()
    examples_figure: bool | None = Field(None, description=EXAMPLES_FIGURE_HELP)
