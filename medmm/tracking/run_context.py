"""What every medmm run logs to MLflow besides its metrics: the resolved config, the
cohort manifest (pseudonymised) and its hash, the git commit, and skipped files.

Nothing identifying leaves the cohort folder: the logged manifest carries salted hashes
in place of patient / study identifiers and no paths (paths of real cohorts embed
subject IDs); skipped files are named by a hash too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from medmm.cohort.manifest import Manifest
from medmm.config.core import flatten, to_yaml

MLFLOW_PARAM_MAX = 6000  # mlflow's limit on a param value's length


def default_tracking_uri() -> str:
    """``sqlite:///<cwd>/mlflow.db`` (mlflow 3 refuses a plain folder store by default)."""
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``mlartifacts/`` beside
    the database. MLflow's default, ``./mlruns`` under whatever folder the process runs in,
    scatters a store's artifacts (a test's temporary store wrote into the repository).
    None for a server (it decides) or any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def git_state(cwd: Path | None = None) -> dict[str, str]:
    """Commit of the code that ran, and whether the working tree had local changes."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=cwd, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit or "unknown", "git_dirty": str(bool(dirty)).lower()}


def pseudonym(value: str, salt: str) -> str:
    return hashlib.sha256(f"{salt}:{value}".encode()).hexdigest()[:16]


def pseudonymised_manifest(manifest: Manifest) -> pd.DataFrame:
    """Manifest without identifiers: keyed hashes of patient / study, modality, file hash, split.
    The salt is the manifest's own content hash, so pseudonyms differ between cohorts."""
    salt = manifest.content_hash()
    t = manifest.table
    return pd.DataFrame({
        "patient": [pseudonym(p, salt) for p in t["patient_id"]],
        "study": [pseudonym(s, salt) for s in t["study_id"]],
        "modality": t["modality"].values,
        "sha256": t["sha256"].values,
        "split": t["split"].values,
    })


def safe_skips(skipped: list[dict], salt: str) -> list[dict]:
    """Skipped files without identifiers: file names of real cohorts embed subject IDs (slide
    barcodes, DICOM names), so a file is named by its study's keyed hash and its suffix, and
    its path is cut out of the problem text."""
    return [{"study": pseudonym(s["study_id"], salt), "suffix": Path(s["path"]).suffix,
             "problem": str(s["problem"]).replace(str(s["path"]), "<file>")} for s in skipped]


def log_run_context(client, run_id: str, config, manifest: Manifest | None, skipped: list[dict],
                    content_hash: str | None = None) -> None:
    """Params (flattened config), tags (git, manifest hash) and artifacts of one run.

    A cohort without a manifest (survival's bundled tables) passes ``manifest=None`` and its
    ``content_hash``, which then stands for the manifest hash (tag, ``run/manifest_sha256.txt``)."""
    if manifest is None and not content_hash:
        raise ValueError("log_run_context needs a manifest or the cohort's content_hash")
    params = {k: ("None" if v is None else str(v))[:MLFLOW_PARAM_MAX] for k, v in flatten(config).items()}
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    fresh = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])
    salt = manifest.content_hash() if manifest is not None else content_hash
    git = git_state()
    tags = {**git, "manifest_sha256": salt, "n_skipped_files": str(len(skipped))}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(to_yaml(config))
        (tmp / "manifest_sha256.txt").write_text(salt + "\n")
        if manifest is not None:
            pseudonymised_manifest(manifest).to_csv(tmp / "manifest.csv", index=False)
            summary = manifest.table.groupby(["split", "modality"]).size().rename("files").reset_index()
            summary.to_csv(tmp / "manifest_summary.csv", index=False)
        (tmp / "git.json").write_text(json.dumps(git, indent=2))
        (tmp / "skipped_files.json").write_text(json.dumps(safe_skips(skipped, salt), indent=2))
        for f in tmp.iterdir():
            client.log_artifact(run_id, str(f), artifact_path="run")


def log_json_artifact(client, run_id: str, name: str, payload: Any, artifact_path: str = "results") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=2, default=float))
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
