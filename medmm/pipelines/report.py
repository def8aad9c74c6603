"""Generate radiology reports from X-rays (and ECGs) with a decoder on a pretrained encoder.

``train`` fits the decoder (and fine-tunes the encoders) on the train split, keeps the
epoch with the lowest validation loss, scores it on the held-out split with greedy and
beam search beside two baselines (nearest-neighbour retrieval of a training report; the
most frequent training report), logs everything to MLflow and registers the model.
``evaluate`` scores a registered model again; ``generate`` writes reports for given files.
"""

import json
import sys
from pathlib import Path

from medmm.pipelines.command import Command
from medmm.workflows.report.config import ReportConfig


def arguments(parser) -> None:
    parser.add_argument("--model", help="report model URI for evaluate / generate "
                                        "(default: models:/<tracking.registered_name>@champion)")
    parser.add_argument("--xray", nargs="*", default=[], help="generate: DICOM radiograph(s)")
    parser.add_argument("--ecg", nargs="*", default=[], help="generate: ECG record(s), one per X-ray")
    parser.add_argument("--beams", type=int, default=None, help="generate: 1 = greedy, n = beam search")
    parser.add_argument("--json", action="store_true", help="generate: JSON output for programs")


COMMAND = Command(
    "report", __doc__, ReportConfig, default_config=Path("configs/report/default.yaml"), arguments=arguments,
    subcommands={"train": "fit, evaluate and register", "evaluate": "score a registered model again",
                 "generate": "reports for given files"},
    inputs=["train / evaluate: a pretrained model (pretrained.source) and a cohort folder (data.root)",
            "generate: a report model (--model) and DICOM X-rays (--xray), optionally ECG records (--ecg)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["train / evaluate: an MLflow run (tracking.uri, default ./mlflow.db): config, metrics, results/ tables, "
             "figures/; train registers the model (tracking.registered_name)",
             "generate: the reports, as text or JSON (--json), on stdout",
             "on the console: the headline numbers beside the baselines and the run's dashboard address"],
    examples=["train --config configs/report/default.yaml pretrained.source=models:/medmm-more@champion",
              "evaluate --config configs/report/default.yaml --model models:/medmm-report@champion",
              "generate --model models:/medmm-report@champion --xray study.dcm [--ecg ecg.hea] [--beams 3] [--json]"])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (9 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.workflows.report import run as report

    model_uri = args.model or f"models:/{cfg.tracking.registered_name}@champion"
    if args.command == "generate":
        rows = report.generate(model_uri, cfg.tracking.uri, args.xray, args.ecg, args.beams)
        return json.dumps(rows, indent=2) if args.json else report.format_generated(rows)
    return report.train(cfg) if args.command == "train" else report.evaluate(cfg, model_uri)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
