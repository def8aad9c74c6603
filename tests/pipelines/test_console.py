"""What a command prints: each log line once, the dependencies' idle warnings left out (and
nothing else), the training bar on stderr only where bars are on, and the headline at the end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from medmm.console.logs import QUIET_WARNINGS
from medmm.tracking.pipeline_run import EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT
from medmm.training.lightning_run import TrainingBar, progress_callbacks
from tests.conftest import PTU_TINY, REPO, tiny_overrides

SCRIPT = Path(sys.executable).with_name("medmm")

# how each left-out warning reads (an example per entry of QUIET_WARNINGS)
QUIET_EXAMPLES = {
    "mlflow.pyfunc.utils.data_validation": "\x1b[33mAdd type hints to the `predict` method to enable data validation",
    "transformers.modeling_utils": "`is_gradient_checkpointing` is deprecated and will be removed in v6.",
    "lightning.pytorch.utilities._pytree": "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, "
                                           "TreeSpec) and treespec.is_leaf()` instead.",
    "lightning.pytorch.loops.fit_loop": "The number of training batches (1) is smaller than the logging interval "
                                        "Trainer(log_every_n_steps=10).",
}

CONSOLE_PROBE = textwrap.dedent("""
    import importlib, json, logging, sys, warnings
    import medmm.pipelines  # sets up the console, as every command does first
    import lightning.pytorch  # then a workflow imports Lightning, which adds log handlers of its own
    from medmm.console import adopt_library_loggers
    from medmm.console.logs import QUIET_WARNINGS
    adopt_library_loggers()
    warnings.simplefilter("always")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.warning("a lightning warning")
    rank_zero.info("a lightning note")
    examples = json.loads(sys.argv[1])
    for quiet in QUIET_WARNINGS:  # each attributed to its module's file, as the library raises it
        source = importlib.util.find_spec(quiet.module).origin
        warnings.warn_explicit(examples[quiet.module], quiet.category, source, 1, module=quiet.module)
        warnings.warn_explicit("another warning of " + quiet.module, quiet.category, source, 1, module=quiet.module)
    import mlflow.pyfunc
    class Served(mlflow.pyfunc.PythonModel):  # MLflow's own type-hint note, under its own warning filter
        def predict(self, context, model_input, params=None):
            return model_input
    warnings.warn("a warning of medmm's own", UserWarning)
    import medmm.metrics.zeroshot as zeroshot  # one raised inside the package: one log line, no source line
    warnings.warn_explicit("AUROC undefined for 1 of 9 findings", UserWarning, zeroshot.__file__, 93)
""")


def test_each_line_once_and_only_the_idle_warnings_left_out():
    out = subprocess.run([sys.executable, "-c", CONSOLE_PROBE, json.dumps(QUIET_EXAMPLES)], capture_output=True,
                         text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert err.count("a lightning warning") == 1, err
    assert "WARNING lightning.pytorch.utilities.rank_zero: a lightning warning" in err
    assert "a lightning note" not in err
    assert not [text for text in QUIET_EXAMPLES.values() if text[:30] in err], err
    assert "Add type hints" not in err, err
    for quiet in QUIET_WARNINGS:
        assert err.count(f"another warning of {quiet.module}") == 1, err
    assert "a warning of medmm's own" in err
    assert "WARNING medmm.metrics.zeroshot: AUROC undefined for 1 of 9 findings\n" in err
    assert "warnings.warn(" not in err  # no source line under it


def test_the_training_bar_is_drawn_on_stderr_only_where_bars_are_on(monkeypatch):
    monkeypatch.setenv("MEDMM_PROGRESS", "0")
    assert progress_callbacks(["checkpoint"]) == {"callbacks": ["checkpoint"], "enable_progress_bar": False}
    monkeypatch.setenv("MEDMM_PROGRESS", "1")
    shown = progress_callbacks(["checkpoint"])
    assert shown["enable_progress_bar"] and shown["callbacks"][0] == "checkpoint"
    (bar,) = [c for c in shown["callbacks"] if isinstance(c, TrainingBar)]
    assert bar._console_kwargs == {"stderr": True}


def test_a_tiny_run_prints_its_headline_and_nothing_twice(tiny_cohort, tmp_path):
    """The installed ``medmm`` script, a PTUnifier pretraining of two batches, bars forced on."""
    env = {**os.environ, "MEDMM_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    out = subprocess.run([SCRIPT, "pretrain", "--config", str(PTU_TINY), *tiny_overrides(tiny_cohort, tmp_path),
                          "trainer.limit_train_batches=2"], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("medmm-tiny")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_DEVELOPMENT
    (run,) = client.search_runs([experiment.experiment_id])
    assert re.fullmatch(r"ptunifier-demo-\d{8}-\d{6}", run.info.run_name)
    # stdout: the headline, ending with how to open the run
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"Run {run.info.run_name} - test split (held-out patients):"
    assert re.match(r"\s+X-ray -> report P@5 \(findings match, plain similarity\)\s+\d\.\d{3}", lines[1])
    assert any(line.startswith("exported model: ") for line in lines)
    assert lines[-2].endswith(f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
    assert lines[-1] == f"MLflow run id: {run.info.run_id} (store sqlite:///{tmp_path / 'mlflow.db'})"
    assert "Epoch" not in out.stdout  # the bar is on stderr
    # stderr: the training bar (without the logger's version), no line twice, no idle notes
    assert "Epoch 0/0" in out.stderr and "v_num" not in out.stderr
    bar = re.compile(r"━| {20,}")  # the bar and its metrics column
    text_lines = [line for line in out.stderr.splitlines() if line.strip() and not bar.search(line)]
    assert not [line for line, n in Counter(text_lines).items() if n > 1], out.stderr
    for idle in ("Experiment with name", "Loading weights", "Add type hints", "LeafSpec", "is_gradient_checkpointing",
                 "litlogger", "GPU available", "Creating initial MLflow database tables", "Downloading artifacts"):
        assert idle not in out.stderr, idle
