"""Config of ``python -m medmm.pipelines.retrieve`` (defaults = configs/retrieve/default.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from medmm.config.core import StrictModel
from medmm.data.config import DataConfig
from medmm.tracking.config import RunTrackingConfig
from medmm.workflows.pretrained import PretrainedConfig


class IndexConfig(StrictModel):
    path: Path = Field(Path("runs/retrieval-index"), description="folder of the persistent index")
    modalities: list[Literal["xray", "ecg", "report"]] = Field(
        ["xray", "ecg", "report"], description="one index per modality, all in the shared embedding space")
    exact_max: int = Field(50_000, description="up to this many studies the index is exact (flat inner product)")
    approximate: Literal["hnsw", "ivf"] = Field("hnsw", description="index past exact_max studies")
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int | None = Field(None, description="IVF cells (None: 4 sqrt(n))")
    ivf_nprobe: int = 16


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
