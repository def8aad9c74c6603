"""Report generation and summarisation over seeds: each system's figures, mean ± sample sd over seeds,
one MLflow run a seed.

Report generation (``task: generate``): BLEU-1..4, ROUGE-L, CIDEr and clinical precision / recall / F1
of the model's decodings and both baselines; summarisation (``task: summarise``): ROUGE-1 / 2 / L and
mean words of the model's decodings and the three baselines; on the config's held-out split:

    python benchmarks/report_seeds.py [--config configs/report/default.yaml] [--pretrained models:/medmm-more@champion]
        [--seeds 0 1 2] [--tracking-uri sqlite:///mlflow.db] [--set key=value ...] [--out report_seeds.json]

Each seed is ``python -m medmm.pipelines.report train --config <config> <key=value ...>`` run in process
with ``seed=<N>`` and ``tracking.run_name=report-seed<N>`` (``tracking.register_model=false`` unless a
``--set`` turns it on); the figures are read back from each run's ``results/report_metrics.json``
(``results/summarise_metrics.json``).
``--pretrained`` sets ``pretrained.source`` (default: the config's); a pretrained model registered in
another store than ``--tracking-uri`` needs ``--set pretrained.tracking_uri=<its store>``. Writes the
per-seed figures and the table to ``benchmarks/results/report_seeds.json`` (or ``--out``) and prints
the markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.readme_tables import METRICS
from medmm.config.core import build_config
from medmm.workflows.report.config import ReportConfig
from medmm.workflows.report.run import train
from medmm.workflows.report.summarise import ROUGE

# per task: the figures file each run logs and the columns of the table; mean words is a length,
# shown but not ranked
FIGURES = {"generate": ("results/report_metrics.json", METRICS),
           "summarise": ("results/summarise_metrics.json", (*ROUGE, "mean_words"))}
UNRANKED = {"mean_words"}

# a registered model per seed would move the config's registered name and its champion alias
LEAN = ["tracking.register_model=false"]


def one_seed(config: Path, seed: int, overrides: list[str]) -> dict:
    """One tracked report-generation run of ``config`` with ``overrides`` and ``seed``: its
    run id, wall clock and the figures of every system (system -> metric -> value)."""
    cfg = build_config(ReportConfig, config, [*LEAN, *overrides, f"seed={seed}",
                                              f"tracking.run_name=report-seed{seed}"])
    start = time.perf_counter()
    outcome = train(cfg)
    seconds = round(time.perf_counter() - start)
    figures, _ = FIGURES[cfg.task]
    path = MlflowClient(outcome.tracking_uri).download_artifacts(outcome.run_id, figures)
    rows = json.loads(Path(path).read_text())
    return {"seed": seed, "task": cfg.task, "run_id": outcome.run_id, "tracking_uri": outcome.tracking_uri,
            "split": outcome.split, "seconds": seconds, "systems": {row.pop("system"): row for row in rows}}


def table(runs: list[dict]) -> str:
    """A row per system, a column per metric, each cell mean ± sample sd over the runs (the value
    alone for one run), bold = best mean per ranked column; the run ids below."""
    _, columns = FIGURES[runs[0].get("task", "generate")]  # results written before summarisation had no task
    systems = list(runs[0]["systems"])
    values = {(s, m): np.array([r["systems"][s][m] for r in runs], float) for s in systems for m in columns}
    best = {m: max(values[s, m].mean() for s in systems) for m in columns}
    # nobody wins what all share, nor a length
    tied = {m for m in columns if len({values[s, m].mean() for s in systems}) == 1} | UNRANKED

    def cell(s: str, m: str) -> str:
        v = values[s, m]
        text = f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
        return f"**{text}**" if v.mean() == best[m] and m not in tied else text

    n = len(runs)
    lines = [f"| system, {n} seed{'s' if n > 1 else ''} | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns),
             *(f"| {s} | " + " | ".join(cell(s, m) for m in columns) + " |" for s in systems),
             "",
             f"Split `{runs[0]['split']}`; mean ± sample sd (ddof = 1) over seeds; **bold** = best mean per column"
             + ("" if UNRANKED.isdisjoint(columns) else " (mean words not ranked)") + ".",
             "MLflow runs: " + ", ".join(f"seed {r['seed']} `{r['run_id']}`" for r in runs) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs/report/default.yaml")
    parser.add_argument("--pretrained", default=None, help="pretrained.source (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tracking-uri", default=None, help="MLflow store of the runs (default: the config's "
                                                             "tracking.uri, else sqlite:///mlflow.db here)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/report_seeds.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every seed (repeatable)")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    overrides = [*args.overrides, *([f"pretrained.source={args.pretrained}"] if args.pretrained else []),
                 *([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])]
    runs = [one_seed(args.config, seed, overrides) for seed in args.seeds]
    text = table(runs)
    command = f"python benchmarks/report_seeds.py {shlex.join(raw)}".rstrip()
    config = args.config.resolve()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": command, "config": str(config.relative_to(REPO) if
                                                                     config.is_relative_to(REPO) else config),
                                    "overrides": overrides, "runs": runs, "table": text}, indent=2))
    print(f"{text}\n\nCommand: `{command}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
