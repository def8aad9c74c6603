"""What ingest makes of each shipped cohort spec on a generated replica of its dataset's
layout (tests/cohort/replicas.py): files matched, patients, studies, rows by modality, links
made and files / rows / studies dropped by category. Prints a Markdown table (the one in
docs/results/io.md) and writes benchmarks/results/cohort_replicas.json.

    python benchmarks/cohort_replicas.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medmm.cohort.ingest import ingest  # noqa: E402
from medmm.cohort.spec import load_cohort_spec  # noqa: E402
from tests.cohort.replicas import REPLICAS  # noqa: E402


def measure(name: str, folder: Path) -> dict:
    root = folder / name
    root.mkdir()
    REPLICAS[name](root)
    stats = ingest(load_cohort_spec(REPO / "cohorts" / f"{name}.yaml"), root, root / "manifest.parquet", workers=1)
    rows = pd.read_parquet(root / "manifest.parquet")["modality"].value_counts().sort_index().to_dict()
    return {"files_matched": stats.n_files_seen, "patients": stats.n_patients, "studies": stats.n_studies,
            "rows": {k: int(v) for k, v in rows.items()}, "links": stats.n_links, "dropped": stats.dropped}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: measure(name, Path(tmp)) for name in sorted(REPLICAS)}
    (REPO / "benchmarks/results/cohort_replicas.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| spec | files matched | patients | studies | rows by modality | links | dropped |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rows = ", ".join(f"{m} {n}" for m, n in r["rows"].items())
        dropped = "; ".join(f"{category}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.items())
                            for category, reasons in r["dropped"].items()) or "-"
        print(f"| `{name}` | {r['files_matched']} | {r['patients']} | {r['studies']} | {rows} | {r['links']} | "
              f"{dropped} |")


if __name__ == "__main__":
    main()
