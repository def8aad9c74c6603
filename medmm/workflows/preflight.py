"""What every workflow checks before it builds anything, so that a wrong input fails in
seconds, in one line naming it, and before an MLflow run exists.

:func:`check_before_run` is the first call of each workflow's entry point: the cohort
folder and its manifest (readable, no patient in two splits), the modalities the run needs,
the studies of each split it trains and evaluates on, the output folder, the tracking store
(:func:`medmm.tracking.store.check_store`), the local checkpoints its model config names
(:func:`check_model_checkpoints`) and, for a workflow that starts from a pretrained
model, that model's source. A problem raises :class:`medmm.io.errors.MedmmInputError` (the
data) or :class:`medmm.config.ConfigError` (a setting), which the command prints as one line
with exit code 2. Nothing here decodes a file, builds a model or opens a run; the module loads
neither torch nor Lightning, so a command may call it before importing its workflow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from medmm.cohort.manifest import MANIFEST_NAME, SPLITS, Manifest
from medmm.cohort.splits import verify_before_training
from medmm.config.core import ConfigError
from medmm.data.config import LABS_FILE, decoded_cache_folder, labs_table_columns
from medmm.data.decoded_cohort import anchor_modality
from medmm.io.errors import MedmmInputError
from medmm.tracking.store import (
    check_store,
    default_tracking_uri,
    prepare_store,
    sqlite_path,
    writable_folder_problem,
)

# The split sizes a paired pretraining run needs: a contrastive (or ITM / ITC) batch needs a
# second study as its negative; validation selects the checkpoint and the registered
# champion (by val/loss); retrieval ranks at least two candidates.
PAIRED_TRAINING_MINIMUM = {"train": 2, "val": 1, "test": 2}
BY_ANCHOR = "anchor"  # CohortNeeds.study_modality: the modality the decoded cohort reads a study by
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)(?:/.*)?$")


@dataclass(frozen=True)
class CohortFacts:
    """What a cohort holds, as read from its manifest (no file decoded)."""

    manifest: Manifest = field(repr=False)
    modalities: tuple[str, ...]  # sorted: the manifest's modalities, plus "labs" where <root>/labs.csv has columns
    studies: dict[str, int] = field(default_factory=dict)  # split -> studies the run reads
    read_by: str | None = None  # the modality those studies were counted by (None: every study)
    studies_with: dict[str, dict[str, int]] = field(default_factory=dict)  # modality -> split -> those studies with it

    def describe(self) -> str:
        return ", ".join(self.modalities) or "no files"

    def too_few(self, modalities: Iterable[str], minimum: Mapping[str, int]) -> dict[str, str]:
        """The ``modalities`` the cohort has in fewer of its read studies than ``minimum`` per
        split (an ECG in one study of an X-ray export), each with the counts that say why."""
        sparse = {}
        for m in modalities:
            counts = self.studies_with.get(m)
            if counts is not None and any(counts.get(split, 0) < n for split, n in minimum.items()):
                have = ", ".join(f"{counts.get(split, 0)} {split}" for split in minimum)
                need = " / ".join(str(n) for n in minimum.values())
                sparse[m] = f"{have} studies; pairing needs {need}"
        return sparse


@dataclass(frozen=True)
class CohortNeeds:
    """What a workflow needs of its cohort. ``study_modality``: the file every study the run
    reads must have (:data:`BY_ANCHOR`: the one the decoded cohort reads a study by, its
    X-ray or in a cohort without X-rays its ECG); ``minimum``: studies per split; ``why``:
    what needs them, for the messages."""

    root: str | Path
    modalities: tuple[str, ...] = ()
    minimum: Mapping[str, int] = field(default_factory=dict)
    study_modality: str | None = BY_ANCHOR
    limit_studies: int | None = None
    why: str = "this workflow"


def read_cohort(root: str | Path, study_modality: str | None = BY_ANCHOR, limit_studies: int | None = None
                ) -> CohortFacts:
    """The cohort at ``root``: its manifest, modalities and studies per split (those with a
    ``study_modality`` file among the first ``limit_studies`` studies, as the DataModule reads
    them). A missing folder or manifest, an unreadable or leaking manifest is one-line bad input."""
    root = Path(root)
    if not root.exists():
        raise MedmmInputError(root, "no such cohort folder (data.root)")
    if not root.is_dir():
        raise MedmmInputError(root, "is a file, not a cohort folder (data.root)")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise MedmmInputError(path, "no cohort manifest: ingest the cohort first (python -m medmm.pipelines.ingest "
                                    "--spec <cohort spec> --root <data>), or build the demo cohort (python -m "
                                    "medmm.pipelines.make_demo)")
    try:
        manifest = Manifest.load(root)
        verify_before_training(manifest, check_paths=False)  # the paths are checked as the files are read
    except (OSError, ValueError) as exc:  # pyarrow's and the leakage checks' errors are ValueErrors
        raise MedmmInputError(path, f"unusable manifest ({type(exc).__name__}: {exc})") from None
    if manifest.table.empty:
        raise MedmmInputError(path, "the manifest lists no files")
    modalities = set(manifest.table["modality"].dropna().astype(str))
    if labs_table_columns(root):
        modalities.add("labs")
    studies = manifest.studies()
    if limit_studies is not None:
        studies = studies.iloc[:limit_studies]
    if study_modality == BY_ANCHOR:
        study_modality = anchor_modality(modalities) or "xray"
    if study_modality is not None:
        column = studies[study_modality] if study_modality in studies.columns else None
        studies = studies[column.notna() & (column != "")] if column is not None else studies.iloc[:0]
    counts = studies["split"].value_counts()
    with_modality = {m: {s: int(n) for s, n in studies.loc[studies[m].notna() & (studies[m] != ""), "split"]
                         .value_counts().items()}
                     for m in modalities if m in studies.columns}
    return CohortFacts(manifest, tuple(sorted(modalities)), {s: int(counts.get(s, 0)) for s in SPLITS},
                       study_modality, with_modality)


def check_cohort(needs: CohortNeeds) -> CohortFacts:
    """The cohort of ``needs.root`` with every needed modality and enough studies per split."""
    facts = read_cohort(needs.root, needs.study_modality, needs.limit_studies)
    lacking = [m for m in needs.modalities if m not in facts.modalities]
    if lacking:
        where = f"{LABS_FILE} or manifest" if "labs" in lacking else "manifest"
        raise MedmmInputError(needs.root, f"{needs.why} needs {', '.join(needs.modalities)}; the cohort's {where} "
                                          f"has no {', '.join(lacking)} (it has {facts.describe()})")
    for split, minimum in needs.minimum.items():
        n = facts.studies.get(split, 0)
        if n < minimum:
            unit = f"stud(ies) with {facts.read_by}" if facts.read_by else "stud(ies)"
            limit = " within data.limit_studies" if needs.limit_studies is not None else ""
            raise MedmmInputError(needs.root, f"the {split} split holds {n} {unit}{limit}; {needs.why} needs at "
                                              f"least {minimum} (the cohort spec's split fractions set the splits)")
    return facts


def check_output_folder(folder: str | Path, setting: str = "output_dir") -> None:
    """``folder`` can be created and written (checkpoints, exports and caches go there)."""
    problem = writable_folder_problem(Path(folder))
    if problem:
        raise ConfigError(f"{setting} {folder}: {problem}")


def decoded_cohort_outputs(data, output: str | Path, setting: str = "output_dir") -> dict[str, Path]:
    """The folders a run over a decoded cohort writes (``check_before_run``'s ``output_dirs``):
    its ``output`` (named by its config ``setting``) and the cache of the ``data`` section
    (``root``, ``cache_dir``), which defaults to a folder inside a cohort that may be read-only."""
    return {setting: Path(output), "data.cache_dir": decoded_cache_folder(data.root, data.cache_dir)}


def check_pretrained_source(source: str | Path | None, tracking_uri: str, setting: str) -> None:
    """A pretrained model's ``source`` exists: a local folder, a registered model version or
    alias (``models:/name@alias``, ``models:/name/3``) or a run (``runs:/<id>/...``) in the
    store at ``tracking_uri``. Asks the registry only, downloads nothing."""
    if source is None or str(source) == "":
        raise ConfigError(f"{setting} is required: an MLflow model URI (models:/name@champion) or a model folder")
    source = str(source)
    if Path(source).exists():
        return
    registered, run = _REGISTRY_URI.match(source), _RUN_URI.match(source)
    if registered is None and run is None:
        raise MedmmInputError(source, f"no such folder, and not an MLflow URI (models:/..., runs:/...) ({setting})")
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():  # looking it up would create an empty store
        raise MedmmInputError(source, f"no tracking store at {tracking_uri} to look it up in ({setting})")
    check_store(tracking_uri)
    # imported here: MLflow takes seconds to load, and a workflow without a pretrained model never needs it
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(prepare_store(tracking_uri))
    try:
        if run is not None:
            client.get_run(run["run_id"])
        elif registered["alias"] is not None:
            client.get_model_version_by_alias(registered["name"], registered["alias"])
        elif registered["version"].isdigit():
            client.get_model_version(registered["name"], registered["version"])
        else:  # models:/name/latest or a stage: MLflow picks the version when it loads it
            client.get_registered_model(registered["name"])
    except MlflowException as exc:
        what = "run" if run is not None else "registered model"
        reason = exc.message.splitlines()[0] if getattr(exc, "message", "") else type(exc).__name__
        raise MedmmInputError(source, f"no such {what} in {tracking_uri} ({setting}: {reason})") from None


CHECKPOINT_FIELDS = ("checkpoint", "model_path")  # model-config fields naming local weights


def check_model_checkpoints(section: BaseModel | None, setting: str = "model") -> None:
    """Every local checkpoint a model config names (``checkpoint`` / ``model_path`` fields at
    any depth: an encoder's outside weights, a text model folder) exists, so a typo fails in
    seconds instead of after the cohort is decoded."""
    if section is None:
        return
    for name in type(section).model_fields:
        value = getattr(section, name)
        where = f"{setting}.{name}"
        if isinstance(value, BaseModel):
            check_model_checkpoints(value, where)
        elif name in CHECKPOINT_FIELDS and isinstance(value, str) and value and not Path(value).exists():
            raise MedmmInputError(value, f"no such checkpoint file or folder ({where})")


def check_before_run(tracking_uri: str | None, *, output_dirs: Mapping[str, str | Path] | None = None,
                     cohort: CohortNeeds | None = None, pretrained: str | Path | None = None,
                     pretrained_setting: str = "pretrained.source", pretrained_tracking_uri: str | None = None,
                     needs_pretrained: bool = False, model: BaseModel | None = None) -> CohortFacts | None:
    """Every check a workflow can make before it builds anything (module docstring), cheapest
    and most likely first: the model's local checkpoints (``model``: the config's ``model``
    section; a path's existence), the cohort, the output folders, the tracking store, the
    pretrained source (``needs_pretrained``: its absence is an error). ``output_dirs``: setting
    -> folder the run writes (``{"output_dir": cfg.output_dir}``). Returns the cohort's facts
    (None without a cohort)."""
    check_model_checkpoints(model)
    facts = check_cohort(cohort) if cohort is not None else None
    for setting, folder in (output_dirs or {}).items():
        check_output_folder(folder, setting)
    uri = check_store(tracking_uri or default_tracking_uri())
    if needs_pretrained or pretrained is not None:
        check_pretrained_source(pretrained, pretrained_tracking_uri or uri, pretrained_setting)
    return facts
