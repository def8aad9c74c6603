"""Saved models that carry no code: logging and loading medmm's MLflow models.

Every medmm model is logged with MLflow's models-from-code: the code file is
:mod:`medmm.tracking.model_code` (the same for every family), the class that serves the model
is an importable path inside medmm kept in the model's config (``medmm_class``), the weights
are safetensors and the settings YAML / JSON artifacts. Nothing is pickled.

:func:`load_saved_model` refuses a model folder that holds a pickle (by name or by its
protocol header), any other code-bearing file, a code file other than medmm's own, or an
``MLmodel`` that asks MLflow to unpickle a ``python_model``; it checks the folder before
MLflow reads anything in it, then loads that checked copy.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

import mlflow
import yaml

from medmm.io.errors import MedmmInputError

MODEL_CODE = Path(__file__).with_name("model_code.py")
CLASS_KEY = "medmm_class"
# files that run code when a library loads them: pickles (incl. torch / joblib archives) and
# compiled or interpreted code; a model folder of medmm holds none of them
CODE_BEARING_SUFFIXES = frozenset({
    ".pkl", ".pickle", ".cloudpickle", ".dill", ".joblib", ".pt", ".pth", ".ckpt", ".bin",
    ".py", ".pyc", ".pyo", ".pyd", ".so", ".dll", ".dylib", ".sh", ".ipynb",
})
_PICKLE_PROTOCOLS = range(2, 6)  # protocol >= 2 starts with the PROTO opcode 0x80 and its number


def _class_path(model_class: type) -> str:
    return f"{model_class.__module__}:{model_class.__qualname__}"


def log_saved_model(run_id: str, model_class: type, artifacts: dict[str, str], pip_requirements: list[str],
                    registered_name: str | None = None) -> str:
    """Log a model of ``model_class`` (an ``mlflow.pyfunc.PythonModel`` in medmm whose
    ``load_context`` reads the ``artifacts``: safetensors, YAML, JSON) as the model ``model``
    of ``run_id``, registered as ``registered_name`` unless None; returns its URI."""
    served_class(_class_path(model_class))  # fail at logging, not at loading
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts=artifacts,
                                       model_config={CLASS_KEY: _class_path(model_class)},
                                       pip_requirements=pip_requirements, registered_model_name=registered_name)
    return info.model_uri


def served_class(path: str) -> type:
    """The ``mlflow.pyfunc.PythonModel`` subclass named ``module:Class`` inside medmm."""
    module, _, name = str(path).partition(":")
    if not module.startswith("medmm.") or not name:
        raise MedmmInputError(None, f"model class {path!r} is not a medmm class (module:Class under medmm.)")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, mlflow.pyfunc.PythonModel)) or cls is ServedModel:
        raise MedmmInputError(None, f"model class {path!r} is not a medmm served model")
    return cls


class ServedModel(mlflow.pyfunc.PythonModel):
    """What :mod:`medmm.tracking.model_code` hands MLflow: it builds the medmm class that the
    model's config names and passes every call on to it."""

    def load_context(self, context) -> None:
        self.served = served_class((context.model_config or {}).get(CLASS_KEY, ""))()
        self.served.load_context(context)

    def predict(self, context, model_input, params=None):
        return self.served.predict(context, model_input, params)


def _is_pickle(path: Path) -> bool:
    if path.suffix == ".safetensors":  # its 8-byte header length may start with 0x80
        return False
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS


def check_model_folder(folder: Path) -> None:
    """Refuse (``MedmmInputError`` naming the file) a model folder holding a pickle or other
    code-bearing file, a code file other than medmm's own, or an ``MLmodel`` whose python
    model is pickled."""
    own_code = MODEL_CODE.read_bytes()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() or p.is_symlink()):
        if path.is_symlink():
            raise MedmmInputError(path, "a link in a model folder: medmm loads only the folder's own files")
        if path.name == MODEL_CODE.name and path.read_bytes() == own_code:
            continue
        if path.suffix.lower() in CODE_BEARING_SUFFIXES or _is_pickle(path):
            raise MedmmInputError(path, "a code-bearing file (pickle or code) in a model folder: refused, "
                                        "medmm models hold safetensors weights and YAML / JSON settings only")
    mlmodel = Path(folder) / "MLmodel"
    if mlmodel.is_file():
        pyfunc = ((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}).get("python_function") or {}
        if "python_model" in pyfunc or Path(str(pyfunc.get("model_code_path", ""))).name != MODEL_CODE.name:
            raise MedmmInputError(mlmodel, "not a medmm model logged from code: its python model is pickled "
                                           "or its code is not medmm's; refused")


def load_saved_model(source: str | Path, tracking_uri: str | None = None):
    """The pyfunc model at ``source`` (a model folder or an MLflow model URI), loaded only
    after :func:`check_model_folder` passes on the very files MLflow then reads."""
    local = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        if not local.exists():
            if tracking_uri:
                mlflow.set_tracking_uri(tracking_uri)
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=str(source), dst_path=tmp))
            except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad URI
                raise MedmmInputError(source, f"not a loadable MLflow model URI ({exc})") from None
        check_model_folder(local)
        return mlflow.pyfunc.load_model(str(local))


def served_model(loaded) -> mlflow.pyfunc.PythonModel:
    """The medmm class instance behind a pyfunc model that :func:`load_saved_model` loaded."""
    python_model = loaded.unwrap_python_model()
    return python_model.served if isinstance(python_model, ServedModel) else python_model
