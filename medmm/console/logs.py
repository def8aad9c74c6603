"""What reaches the terminal besides a command's own output: one log handler on stderr for
every logger, and the dependencies' warnings and notes that tell the user nothing left out.

Each left-out warning is named by its category, the module it is attributed to and the start
of its message, so that any other warning of the same library still shows, and medmm's own
warnings always do. They are dropped where Python would show them (a ``warnings.showwarning``
hook), not by a warnings filter: a library may put its own filter in front around its calls
(MLflow shows its type-hint notes "once" whatever the filters say). :func:`configure_console`
runs first in every command; :func:`adopt_library_loggers` runs once Lightning is imported
(Lightning adds its own handlers when imported, which would print each of its lines twice
beside the root handler).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from medmm.console.progress import progress_enabled

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class QuietWarning:
    """A dependency's warning left out: its category, the module it is attributed to and
    the start of its message (a regular expression)."""

    category: type[Warning]
    module: str
    message: str

    def matches(self, category: type[Warning], filename: str, message: str) -> bool:
        source = "/" + self.module.replace(".", "/") + ".py"
        return (issubclass(category, self.category) and filename.replace("\\", "/").endswith(source)
                and re.match(self.message, message) is not None)


# developer notes of a dependency about another dependency, or about code the user does not write
QUIET_WARNINGS = (
    # MLflow, on defining medmm's served-model classes: a hint for authors of pyfunc models
    QuietWarning(UserWarning, "mlflow.pyfunc.utils.data_validation", r"\W*(\[\d+m)?Add type hints to the `predict`"),
    # transformers, when peft asks a model whether it checkpoints activations
    QuietWarning(FutureWarning, "transformers.modeling_utils", r"`is_gradient_checkpointing` is deprecated"),
    # Lightning's own use of a torch API that torch deprecated
    QuietWarning(FutureWarning, "lightning.pytorch.utilities._pytree",
                 r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Lightning, when an epoch has fewer batches than its logging interval: medmm logs every
    # step of a short epoch anyway (and says so where it shrank the batch)
    QuietWarning(UserWarning, "lightning.pytorch.loops.fit_loop", r"The number of training batches \(\d+\) is smaller"),
)
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # medmm/: its own warnings print as log lines

# loggers whose INFO notes say nothing to the user: MLflow's creation of a new store's
# tables, Lightning's start-up notes (accelerators available, an advertisement, "fit stopped:
# max_epochs reached"); their warnings still show
QUIET_LOGGERS = ("mlflow.store.db.utils", "lightning.pytorch", "lightning.fabric")
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")

_show_warning = warnings.showwarning  # what shows the warnings that are not left out


class _MedmmHandler(logging.StreamHandler):
    """The root handler medmm installs (a type of its own, so that it is installed once). It
    writes to ``sys.stderr`` as it is when a line is logged: a notebook or a test replaces it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def is_quiet(category: type[Warning], filename: str, message: str) -> bool:
    """Whether a warning is one of :data:`QUIET_WARNINGS`."""
    return any(quiet.matches(category, filename, message) for quiet in QUIET_WARNINGS)


def _show_unless_quiet(message, category, filename, lineno, file=None, line=None) -> None:
    if is_quiet(category, filename, str(message)):
        return
    if file is None and str(filename).startswith(PACKAGE_DIR):
        # medmm's own warnings are for the user: one log line, without the source line
        module = Path(filename).resolve().relative_to(Path(PACKAGE_DIR).parent).with_suffix("")
        logging.getLogger(".".join(module.parts)).warning("%s", message)
        return
    _show_warning(message, category, filename, lineno, file, line)


def configure_console() -> None:
    """One stderr handler on the root logger (``LEVEL logger: message``), the quiet warnings
    and notes left out, and the dependencies' own progress bars off where medmm's are
    (:func:`medmm.console.progress_enabled`). Idempotent."""
    global _show_warning
    root = logging.getLogger()
    if not any(isinstance(h, _MedmmHandler) for h in root.handlers):
        handler = _MedmmHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    if warnings.showwarning is not _show_unless_quiet:
        _show_warning, warnings.showwarning = warnings.showwarning, _show_unless_quiet
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # a local tokenizer's "Loading weights" bar (under a second); read when huggingface_hub is imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        transformers_logging.disable_progress_bar()  # imported before: it read the setting already
    if not progress_enabled():  # MLflow's artifact bars print even into a log file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def adopt_library_loggers() -> None:
    """Route Lightning's loggers through the root handler: Lightning adds a handler of its
    own on import (and one more where the root has none), so each of its lines printed twice;
    its INFO notes stay hidden (it resets their level to INFO on import). Without a root
    handler (medmm used as a library) Lightning keeps its own."""
    if logging.getLogger().handlers:
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            logger.handlers = [h for h in logger.handlers if type(h) is not logging.StreamHandler]
            logger.propagate = True
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
