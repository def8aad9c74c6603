"""Where a pipeline's MLflow run goes: the fields every pipeline's tracking config shares.
Each pipeline subclasses it with its default experiment and what its run registers."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medmm.config.core import StrictModel


class RunTrackingConfig(StrictModel):
    uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite:///mlflow.db in the working folder)")
    experiment: str = Field(description="MLflow experiment of the run")
    run_name: str | None = Field(None, description="MLflow run name (default: <workflow>-<cohort name>-"
                                                   "<YYYYmmdd-HHMMSS>, e.g. pretrain-demo-20261207-071233)")
    pseudonym_key_file: Path | None = Field(
        None, description="file holding the secret key of patient / study pseudonyms (default: $MEDMM_PSEUDONYM_KEY, "
                          "else a key generated once into ~/.config/medmm/pseudonym.key)")
