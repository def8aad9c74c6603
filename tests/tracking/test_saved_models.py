"""Saved models carry no code: every family is logged with MLflow's models-from-code (medmm's
one code file, weights in safetensors, settings in YAML / JSON), medmm's loaders refuse a
model folder holding a pickle before anything in it runs, and a served model reads only the
files its caller may name."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from medmm.data.inputs import SCORING_SERVER_ENV, SERVE_ROOT_ENV
from medmm.demo.writers import write_cxr_dicom
from medmm.io.errors import MedmmInputError
from medmm.tracking.pipeline_run import start_run
from medmm.tracking.saved_model import (
    CODE_BEARING_SUFFIXES,
    MODEL_CODE,
    check_model_folder,
    load_saved_model,
)
from medmm.workflows.pretrained import load_pretrained
from medmm.workflows.ptunifier.served import log_pretrained_embedder
from tests.conftest import REPO, make_model


class WritesMarker:
    """A pickle payload: unpickling it runs ``open(marker, "w")``, which creates the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A PTUnifier embedder logged to a SQLite store, and its downloaded model folder."""
    tmp = tmp_path_factory.mktemp("saved")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    model, cfg = make_model()
    _, run_id, _ = start_run(uri, "saved-models", None, "test")
    mlflow.set_tracking_uri(uri)
    model_uri = log_pretrained_embedder(run_id, model, cfg)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(tmp / "download")))
    return uri, model_uri, folder


@pytest.fixture(scope="module")
def xray(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    return write_cxr_dicom(tmp_path_factory.mktemp("xr") / "x.dcm", rng.random((64, 64)), patient_id="P",
                           patient_name="Anon", study_uid="1.2.3", series_uid="1.2.3.1", sop_uid="1.2.3.1.1",
                           study_date="20200101")


def test_a_logged_model_holds_no_pickle_and_no_code_but_medmms_own_file(logged):
    _, _, folder = logged
    files = _files(folder)
    assert {"MLmodel", "model_code.py", "artifacts/model.safetensors", "artifacts/config.yaml"} <= files, files
    assert not [f for f in files if Path(f).suffix in CODE_BEARING_SUFFIXES and f != "model_code.py"], files
    assert (folder / "model_code.py").read_bytes() == MODEL_CODE.read_bytes()
    pyfunc = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in pyfunc and pyfunc["model_code_path"].endswith("model_code.py")
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            assert path.read_bytes()[:1] != b"\x80", path  # no pickle header anywhere
    check_model_folder(folder)


def _plant(folder: Path, dst: Path, marker: Path, how: str) -> Path:
    """A copy of ``folder`` with a pickle payload: as MLflow's python model, or disguised as JSON."""
    shutil.copytree(folder, dst)
    payload = pickle.dumps(WritesMarker(marker), protocol=4)
    if how == "python_model":
        (dst / "python_model.pkl").write_bytes(payload)
        mlmodel = yaml.safe_load((dst / "MLmodel").read_text())
        pyfunc = mlmodel["flavors"]["python_function"]
        pyfunc.pop("model_code_path")
        pyfunc["python_model"] = "python_model.pkl"
        (dst / "MLmodel").write_text(yaml.safe_dump(mlmodel))
        return dst / "python_model.pkl"
    (dst / "artifacts" / "settings.json").write_bytes(payload)
    return dst / "artifacts" / "settings.json"


@pytest.mark.parametrize("how", ["python_model", "disguised"])
def test_a_planted_pickle_is_refused_by_every_loader_and_never_runs(logged, xray, tmp_path, how):
    _, _, folder = logged
    marker = tmp_path / "payload_ran"
    planted = _plant(folder, tmp_path / "model", marker, how)
    with pytest.raises(MedmmInputError, match=planted.name):
        load_saved_model(tmp_path / "model")
    with pytest.raises(MedmmInputError, match=planted.name):
        load_pretrained(tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "medmm.pipelines.report", "generate", "--model",
                          str(tmp_path / "model"), "--xray", str(xray)],
                         check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr[-2000:]
    assert planted.name in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not marker.exists()
    if how == "python_model":  # the payload is live: MLflow on its own would run it
        with pytest.raises(Exception):  # noqa: B017 - it fails after running, in MLflow's own way
            mlflow.pyfunc.load_model(str(tmp_path / "model"))
        assert marker.exists()


def test_a_model_folder_with_another_code_file_is_refused(logged, tmp_path):
    _, _, folder = logged
    shutil.copytree(folder, tmp_path / "model")
    (tmp_path / "model" / "model_code.py").write_text("import os\n" + MODEL_CODE.read_text())
    with pytest.raises(MedmmInputError, match="model_code.py"):
        load_saved_model(tmp_path / "model")


def test_the_loaded_model_embeds_texts_bytes_and_paths_only_inside_the_served_root(logged, xray, tmp_path,
                                                                                   monkeypatch):
    uri, model_uri, _ = logged
    model = load_saved_model(model_uri, uri)
    texts = model.predict(pd.DataFrame({"report": ["No pleural effusion."]}))
    by_path = model.predict(pd.DataFrame({"xray": [str(xray)]}))  # in-process, no root: the caller's own file
    by_bytes = model.predict(pd.DataFrame({"xray": [xray.read_bytes()]}))
    assert texts.shape == by_path.shape == (1, 16)
    np.testing.assert_allclose(by_bytes, by_path, atol=1e-6)

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    shutil.copy(xray, root / "in.dcm")
    shutil.copy(xray, outside / "secret.dcm")
    (root / "link.dcm").symlink_to(outside / "secret.dcm")
    monkeypatch.setenv(SERVE_ROOT_ENV, str(root))
    np.testing.assert_allclose(model.predict(pd.DataFrame({"xray": ["in.dcm"]})), by_path, atol=1e-6)
    np.testing.assert_allclose(model.predict(pd.DataFrame({"xray": [str(root / "in.dcm")]})), by_path, atol=1e-6)
    for escape in ("../outside/secret.dcm", str(outside / "secret.dcm"), "link.dcm", "/etc/passwd"):
        with pytest.raises(MedmmInputError, match=f"outside the folder {SERVE_ROOT_ENV} names"):
            model.predict(pd.DataFrame({"xray": [escape]}))


def test_a_scoring_server_without_a_served_root_reads_no_path(logged, xray, monkeypatch):
    uri, model_uri, _ = logged
    model = load_saved_model(model_uri, uri)
    monkeypatch.delenv(SERVE_ROOT_ENV, raising=False)
    monkeypatch.setenv(SCORING_SERVER_ENV, "/srv/model")  # what `mlflow models serve` sets in its process
    with pytest.raises(MedmmInputError, match="reads no client-named path"):
        model.predict(pd.DataFrame({"xray": [str(xray)]}))
    assert model.predict(pd.DataFrame({"xray": [xray.read_bytes()]})).shape == (1, 16)
