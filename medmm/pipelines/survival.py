"""Train survival models beside scikit-survival baselines and score them on held-out patients.

Neural heads (Cox, DeepSurv, discrete-time; CMTA on slides + genomics) and the baselines
(CoxNet, random survival forest) share the patient-level split.

Per model: Harrell's and Uno's c-index, integrated Brier score, mean time-dependent AUC
with percentile-bootstrap CIs over test patients; a Kaplan-Meier figure of the predicted
risk groups with the log-rank test; test-patient predictions (row numbers only).
"""

import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.survival.config import SurvivalConfig

COMMAND = Command(
    "survival", __doc__, SurvivalConfig, default_config=Path("configs/survival/breast_cancer.yaml"),
    inputs=["a bundled survival table (data.dataset) or a pathology cohort folder (data.dataset=pathology, data.root)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, figures/",
             "the models, registered when tracking.register_model",
             "on the console: the headline c-index of each model and the run's dashboard address"],
    examples=["--config configs/survival/breast_cancer.yaml",
              "--config configs/survival/demo_pathology.yaml eval.n_bootstrap=500"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (5 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.workflows.survival.run import run

    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
