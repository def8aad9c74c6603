"""The default pretraining over several seeds: held-out label-match P@5 of every retrieval
direction by plain similarity (the figure other papers report) and the val-chosen re-ranked
figure, beside chance, the oracle and the oracle's band; mean and sample sd over seeds.

    python benchmarks/pretrain_seeds.py --cohort data/demo --seeds 0 1 2
    python benchmarks/pretrain_seeds.py --cohort <tiny cohort> --config configs/pretrain/tiny.yaml --seeds 0 1

Writes ``benchmarks/results/pretrain_seeds.json`` (or ``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmm.config.core import build_config  # noqa: E402
from medmm.workflows.contrastive.config import PretrainConfig  # noqa: E402
from medmm.workflows.contrastive.run import run  # noqa: E402

DIRECTIONS = ("xray_to_report", "ecg_to_report", "report_to_xray", "report_to_ecg", "xray_to_ecg", "ecg_to_xray")


def one_seed(cohort: Path, config: Path, work: Path, seed: int, overrides: list[str]) -> dict:
    cfg = build_config(PretrainConfig, config, [f"data.root={cohort}", f"data.cache_dir={work / 'cache'}",
                                                f"output_dir={work / 'runs'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
                                                "tracking.register_model=false", f"seed={seed}", *overrides])
    start = time.perf_counter()
    outcome = run(cfg)
    levels = {r["metric"]: r for r in outcome.rows}
    out = {"seed": seed, "run_id": outcome.run_id, "seconds": round(time.perf_counter() - start), "directions": {}}
    for d in DIRECTIONS:
        if f"{d}.P@5" not in outcome.metrics:
            continue
        q, c = d.split("_to_")
        row = levels.get(f"{q}->{c} P@5", {})
        out["directions"][d] = {"plain": outcome.metrics[f"{d}.P@5"],
                                "val_chosen": outcome.metrics.get(f"{d}.val_chosen.P@5"),
                                "method": int(outcome.metrics.get(f"{d}.val_chosen_method", 0)),
                                "chance": row.get("chance"), "oracle": row.get("oracle"),
                                "band": row.get("oracle_upper")}
    return out


def table(runs: list[dict]) -> str:
    def stat(values):
        v = np.asarray([x for x in values if x is not None], dtype=float)
        if not len(v):
            return "-"
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    def level(d, key):
        x = runs[0]["directions"][d][key]
        return "-" if x is None else f"{x:.3f}"

    lines = [f"| P@5, {len(runs)} seeds | plain | val-chosen | chance | oracle | band |", "|---|---|---|---|---|---|"]
    for d in DIRECTIONS:
        if d not in runs[0]["directions"]:
            continue
        per = [r["directions"][d] for r in runs]
        lines.append(f"| {d.replace('_to_', ' -> ')} | {stat([p['plain'] for p in per])} | "
                     f"{stat([p['val_chosen'] for p in per])} | {level(d, 'chance')} | {level(d, 'oracle')} | "
                     f"{level(d, 'band')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=REPO / "data/demo")
    parser.add_argument("--config", type=Path, default=REPO / "configs/pretrain/default.yaml")
    parser.add_argument("--work", type=Path, default=REPO / "runs/pretrain_seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/pretrain_seeds.json")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every seed")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = [one_seed(args.cohort, args.config, args.work, seed, args.overrides) for seed in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO)
                                                  else args.config), "overrides": args.overrides, "runs": runs},
                                   indent=2))
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
