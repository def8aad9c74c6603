"""Build a retrieval index of a cohort's studies and query it with an X-ray, an ECG or text.

``build`` embeds every study of the cohort with a pretrained model and writes one FAISS
index per modality, stamped with the weights' and the manifest's hashes, and logs the
build to MLflow. ``query`` embeds one X-ray, ECG or text with the same model and returns
the top-k studies with their scores and report text; an index built from other weights or
another cohort is refused (exit code 2).
"""

import json
import sys
from pathlib import Path

from medmm.config.core import ConfigError
from medmm.pipelines.command import Command
from medmm.workflows.retrieve.config import RetrieveConfig


def arguments(parser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--xray", help="query: a DICOM radiograph")
    group.add_argument("--ecg", help="query: an ECG record (WFDB .hea or DICOM waveform)")
    group.add_argument("--text", help="query: free text")
    parser.add_argument("-k", type=int, default=None, help="query: studies returned (default query.k)")
    parser.add_argument("--against", choices=("xray", "ecg", "report"), default=None,
                        help="query: modality index searched (default query.against)")
    parser.add_argument("--json", action="store_true", help="query: JSON output for programs")


COMMAND = Command(
    "retrieve", __doc__, RetrieveConfig, default_config=Path("configs/retrieve/default.yaml"), arguments=arguments,
    subcommands={"build": "embed the cohort and write the index", "query": "top-k studies for one input"},
    inputs=["build: a pretrained model (pretrained.source) and a cohort folder (data.root)",
            "query: the index (index.path), the same model, and one query (--xray FILE, --ecg FILE or --text TEXT)",
            "a YAML config (--config) and key=value overrides"],
    outputs=["build: one FAISS index per modality + studies.parquet + index.json in index.path, and "
             "an MLflow run of the build",
             "query: the top-k studies with score and report text, as text or JSON (--json), on stdout"],
    examples=["build --config configs/retrieve/default.yaml pretrained.source=models:/medmm-more@champion",
              "query --xray study.dcm -k 5 [--against report|xray|ecg] [--json]",
              'query --text "small left pleural effusion"'])


def execute(cfg, args):
    # imported here, not at the top: the workflow loads torch, Lightning / MONAI, MLflow and its data stack
    # (9 s more than the config, measured on 2 CPU cores), which --help and config errors do not need
    from medmm.retrieval.index import format_hits
    from medmm.workflows.retrieve import run as retrieve

    if args.command == "build":
        return retrieve.build(cfg)
    given = [(k, v) for k, v in (("xray", args.xray), ("ecg", args.ecg), ("text", args.text)) if v]
    if not given:
        raise ConfigError("query: give one of --xray FILE, --ecg FILE or --text TEXT")
    (kind, value), against = given[0], args.against or cfg.query.against
    hits = retrieve.query(cfg, kind, value, args.k or cfg.query.k, against)
    return json.dumps({"query": {kind: value}, "against": against, "hits": hits}, indent=2) if args.json \
        else format_hits(hits)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(execute, argv)


if __name__ == "__main__":
    sys.exit(main())
