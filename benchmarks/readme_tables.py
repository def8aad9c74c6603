"""Print the README's report-generation and retrieval-benchmark tables (markdown) from the
runs tracked in MLflow, so the README never holds a number that no run logged.

    python benchmarks/readme_tables.py [--tracking-uri sqlite:///mlflow.db]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlflow.tracking import MlflowClient

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "ce_precision", "ce_recall", "ce_f1")


def latest(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    return runs or None


def report_table(client) -> str:
    runs = latest(client, "medmm-report")
    if not runs:
        return "(no finished medmm-report run)"
    run = runs[0]
    rows = json.loads(Path(client.download_artifacts(run.info.run_id, "results/report_metrics.json")).read_text())
    best = {m: max(rows, key=lambda r: r[m])["system"] for m in METRICS}
    limit = run.data.params.get("eval.max_studies")
    scored = "all" if limit in (None, "None") else limit
    lines = [f"MLflow run `{run.info.run_id}` (experiment medmm-report, split {run.data.params.get('eval.split')}, "
             f"{int(run.data.metrics.get('data.n_test_studies', 0))} test studies, scored on "
             f"{scored} of them; **bold** = best per column)", "",
             "| system | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for r in rows:
        tied = {m for m in METRICS if len({x[m] for x in rows}) == 1}  # nobody wins a column all share
        cells = [f"**{r[m]:.3f}**" if best[m] == r["system"] and m not in tied else f"{r[m]:.3f}" for m in METRICS]
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark_table(client) -> str:
    runs = latest(client, "medmm-retrieval-benchmark")
    if not runs:
        return "(no finished medmm-retrieval-benchmark run)"
    lines = ["| vectors | index | build s | index MB | query ms p50 | query ms p95 | batch queries/s | recall@10 | MLflow run |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    rows = []
    for run in runs:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "results")}
        if "results/retrieval_index.json" not in names:
            continue
        payload = json.loads(Path(client.download_artifacts(run.info.run_id, "results/retrieval_index.json")).read_text())
        rows += [(r, run.info.run_id[:8]) for r in payload["rows"]]
    seen = set()
    for r, rid in sorted(rows, key=lambda x: (x[0]["n"], x[0]["kind"])):
        if (r["n"], r["kind"]) in seen:
            continue
        seen.add((r["n"], r["kind"]))
        lines.append(f"| {r['n']:,} | {r['kind']} | {r['build_s']:.2f} | {r['index_mb']:.1f} | {r['query_ms_p50']:.3f} | "
                     f"{r['query_ms_p95']:.3f} | {r['batch_qps']:.0f} | {r['recall_at_10']:.3f} | `{rid}` |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    client = MlflowClient(ap.parse_args().tracking_uri)
    print("### report generation\n\n" + report_table(client) + "\n\n### retrieval benchmark\n\n" + benchmark_table(client))


if __name__ == "__main__":
    main()
