"""The few lines a run's command ends with: the numbers that matter, each beside what it is
judged against (chance, oracle, a baseline), where the full table is, and how to open the run
in the MLflow dashboard.

    Run pretrain-demo-20261207-071233 - test split (held-out patients):
      X-ray -> report P@5      0.618   chance 0.570   oracle 0.818
    Full table:    results/test_metrics.txt (the run's artifacts in MLflow)
    Open the run:  make mlflow, then http://127.0.0.1:5000/#/experiments/1/runs/b040aa30...
    MLflow run id: b040aa30... (store sqlite:////home/me/medmm/mlflow.db)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DASHBOARD = "http://127.0.0.1:5000"  # where `make mlflow` (and `mlflow ui`) serve by default
REPOSITORY = Path(__file__).resolve().parents[2]  # `make mlflow` serves <repository>/mlflow.db
SQLITE = "sqlite:///"


@dataclass(frozen=True)
class Number:
    """One headline number and what it is judged against: ``(("chance", 0.57), ("oracle", 0.82))``."""

    name: str
    value: float
    against: tuple[tuple[str, float | None], ...] = ()


def serve_command(tracking_uri: str) -> str | None:
    """The command that serves a store's dashboard: ``make mlflow`` for the repository's
    default store, ``mlflow ui --backend-store-uri ...`` for another; None for a server."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    if tracking_uri.startswith(SQLITE):
        db = Path(tracking_uri.removeprefix(SQLITE).split("?", 1)[0]).resolve()
        if db == REPOSITORY / "mlflow.db" and (REPOSITORY / "Makefile").exists():
            return "make mlflow"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def run_page(tracking_uri: str, run_id: str, experiment_id: str | None) -> str:
    """The URL of a run's page in the dashboard that serves its store."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else DASHBOARD
    # MLflow's UI also routes a bare run id, where the experiment is unknown
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}" if experiment_id else f"{base}/#/runs/{run_id}"


def _run_info(tracking_uri: str, run_id: str):
    """(run name, experiment id) of a run; (None, None) where the store cannot be read. A
    SQLite store that does not exist is not read: MLflow would create it."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(SQLITE) and not Path(tracking_uri.removeprefix(SQLITE).split("?", 1)[0]).is_file():
        return None, None
    try:
        info = MlflowClient(tracking_uri).get_run(run_id).info
        return info.run_name, info.experiment_id
    except Exception:  # noqa: BLE001 - the headline still shows the run id and the numbers
        return None, None


def _number(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"


def headline(title: str, numbers: Sequence[Number], *, run_id: str, tracking_uri: str, table: str | None = None,
             notes: Sequence[str] = ()) -> str:
    """The headline of a finished run: ``title`` (what the numbers are, on which split), each
    number beside its references, ``notes`` (a registered model, an exported folder), the
    MLflow artifact ``table`` that holds every number, and how to open the run."""
    name, experiment_id = _run_info(tracking_uri, run_id)
    lines = ["", f"Run {name} - {title}:" if name else f"{title}:"]
    width = max((len(n.name) for n in numbers), default=0)
    for n in numbers:
        against = "".join(f"   {label} {_number(value)}" for label, value in n.against if value is not None)
        lines.append(f"  {n.name:{width}s}  {_number(n.value):>6s}{against}")
    lines += list(notes)
    if table:
        lines.append(f"Full table:    {table} (the run's artifacts in MLflow)")
    serve = serve_command(tracking_uri)
    page = run_page(tracking_uri, run_id, experiment_id)
    lines.append(f"Open the run:  {serve}, then {page}" if serve else f"Open the run:  {page}")
    lines.append(f"MLflow run id: {run_id} (store {tracking_uri})")
    return "\n".join(lines)
