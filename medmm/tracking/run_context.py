"""What every medmm run logs to MLflow besides its metrics: the resolved config, the
cohort manifest (pseudonymised) and its hash, the git commit, and skipped files.

Nothing identifying leaves the cohort folder: the logged manifest carries keyed pseudonyms
(HMAC-SHA256 under the user's secret key, :mod:`medmm.cohort.pseudonym`) in place of
patient / study identifiers and no paths (paths of real cohorts embed subject IDs);
path-valued config fields are logged as keyed hashes; skipped files are named by their
study's pseudonym and a problem category, never the reader's message.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow.entities import Param, RunTag
from pydantic import BaseModel

from medmm.cohort.manifest import Manifest
from medmm.cohort.pseudonym import pseudonym, pseudonym_key
from medmm.config.core import flatten

MLFLOW_PARAM_MAX = 6000  # mlflow's limit on a param value's length
# config fields holding a path by their name (a plain ``str`` field: a model folder, a source)
PATH_FIELD = re.compile(r"(^|_)(root|dir|path|file|source|checkpoint|uri|folder)$")
REDACTED_PREFIX = "path-hmac:"
SAFE_SUFFIX = re.compile(r"\.[A-Za-z]{1,4}|\.nii\.gz")  # a format suffix; anything longer may be part of a name


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


def commit_label(cwd: Path | None = None) -> str:
    """The short commit of the code that ran, marked where the working tree had local changes:
    what a results page names as its commit."""
    state = git_state(cwd)
    label = state["git_commit"][:7]
    return f"{label} (with uncommitted changes)" if state["git_dirty"] == "true" else label


def _is_path_field(name: str) -> bool:
    return bool(PATH_FIELD.search(name))


def _keeps_in_clear(value: str) -> bool:
    """A model-registry or run URI, or a remote server, names no local file."""
    return value.startswith(("models:/", "runs:/", "http://", "https://"))


def redacted_config(config: BaseModel, key: bytes) -> dict[str, Any]:
    """The config as plain data with every path-valued field (a ``Path``, or a string field
    named like a path: ``root``, ``cache_dir``, ``checkpoint``, ``uri``, ...) replaced by its
    keyed hash: folder names of real cohorts and outputs embed subject IDs and user names."""

    def walk(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in dumped.items():
            raw = getattr(model, name, None)
            if isinstance(raw, BaseModel) and isinstance(value, dict):
                out[name] = walk(raw, value)
            elif isinstance(raw, Path) or (isinstance(raw, str) and _is_path_field(name) and not _keeps_in_clear(raw)):
                out[name] = f"{REDACTED_PREFIX}{pseudonym(str(raw), key)}"
            elif isinstance(raw, (list, tuple)) and any(isinstance(v, (Path, BaseModel)) for v in raw):
                # a list of paths, or of sections that hold paths (image_text's sources)
                out[name] = [f"{REDACTED_PREFIX}{pseudonym(str(v), key)}" if isinstance(v, Path)
                             else walk(v, d) if isinstance(v, BaseModel) else d for v, d in zip(raw, value)]
            else:
                out[name] = value
        return out

    return walk(config, config.model_dump(mode="json"))


def run_pseudonym_key(config: BaseModel) -> bytes:
    """The pseudonym key of a run: its tracking section's key file, else the user's key."""
    return pseudonym_key(getattr(getattr(config, "tracking", None), "pseudonym_key_file", None))


def saved_config_yaml(config: BaseModel) -> str:
    """A config as saved beside a model's weights: the ``model`` section as it is (rebuilding
    the model may need a local weights folder it names), every other path-valued field as its
    keyed hash, as in the run's params."""
    data = redacted_config(config, run_pseudonym_key(config))
    model = getattr(config, "model", None)
    if isinstance(model, BaseModel):
        data["model"] = model.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)


def source_tag(source: str | Path, config: BaseModel) -> str:
    """A model source as a tag value: MLflow URIs in clear, a local folder as its keyed hash."""
    source = str(source)
    return source if _keeps_in_clear(source) else f"{REDACTED_PREFIX}{pseudonym(source, run_pseudonym_key(config))}"


def pseudonymised_manifest(manifest: Manifest, key: bytes) -> pd.DataFrame:
    """Manifest without identifiers: keyed pseudonyms of patient / study, modality, file hash, split."""
    t = manifest.table
    return pd.DataFrame({
        "patient": [pseudonym(p, key) for p in t["patient_id"]],
        "study": [pseudonym(s, key) for s in t["study_id"]],
        "modality": t["modality"].values,
        "sha256": t["sha256"].values,
        "split": t["split"].values,
    })


def skip_category(record: dict) -> str:
    """The kind of problem of a skipped file (the reader's exception type), never its message:
    a reader's message names the file, and file names of real cohorts embed subject IDs."""
    return str(record.get("category") or "unreadable")


def format_suffix(path: str) -> str:
    """A file's format suffix (``.hea``, ``.nii.gz``), or "" where the suffix could be a name."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix
    return suffix if SAFE_SUFFIX.fullmatch(suffix) else ""


def safe_skips(skipped: list[dict], key: bytes) -> list[dict]:
    """Skipped files without identifiers: the study's keyed pseudonym, the file's format
    suffix and the problem's category."""
    return [{"study": pseudonym(s["study_id"], key), "suffix": format_suffix(s["path"]), "category": skip_category(s)}
            for s in skipped]


def log_run_context(client, run_id: str, config, manifest: Manifest | None, skipped: list[dict],
                    content_hash: str | None = None) -> None:
    """Params (flattened config, paths as keyed hashes), tags (git, manifest hash) and
    artifacts of one run.

    A cohort without a manifest (survival's bundled tables) passes ``manifest=None`` and its
    ``content_hash``, which then stands for the manifest hash (tag, ``run/manifest_sha256.txt``).
    Pseudonyms are keyed with the user's secret key (:func:`medmm.cohort.pseudonym.pseudonym_key`,
    the config's ``tracking.pseudonym_key_file`` if set), never with anything the run logs."""
    if manifest is None and not content_hash:
        raise ValueError("log_run_context needs a manifest or the cohort's content_hash")
    key = run_pseudonym_key(config)
    logged_config = redacted_config(config, key)
    params = {k: ("None" if v is None else str(v))[:MLFLOW_PARAM_MAX] for k, v in flatten(logged_config).items()}
    existing = client.get_run(run_id).data.params
    fresh = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[i : i + 100])
    manifest_hash = manifest.content_hash() if manifest is not None else content_hash
    git = git_state()
    tags = {**git, "manifest_sha256": manifest_hash, "n_skipped_files": str(len(skipped))}
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(yaml.safe_dump(logged_config, sort_keys=False))
        (tmp / "manifest_sha256.txt").write_text(manifest_hash + "\n")
        if manifest is not None:
            pseudonymised_manifest(manifest, key).to_csv(tmp / "manifest.csv", index=False)
            summary = manifest.table.groupby(["split", "modality"]).size().rename("files").reset_index()
            summary.to_csv(tmp / "manifest_summary.csv", index=False)
        (tmp / "git.json").write_text(json.dumps(git, indent=2))
        (tmp / "skipped_files.json").write_text(json.dumps(safe_skips(skipped, key), indent=2))
        for f in tmp.iterdir():
            client.log_artifact(run_id, str(f), artifact_path="run")


def log_json_artifact(client, run_id: str, name: str, payload: Any, artifact_path: str = "results") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=2, default=float))
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
