"""Every command's --help says what it does, what it reads and writes, and shows an example;
the ``medmm`` console script lists the commands and runs them."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medmm.pipelines
from medmm.cli import commands
from medmm.pipelines.command import summary
from tests.conftest import REPO

PIPELINES = Path(medmm.pipelines.__file__).parent
COMMANDS = sorted(p.stem for p in PIPELINES.glob("*.py") if p.stem not in ("__init__", "command"))
SCRIPT = Path(sys.executable).with_name("medmm")


def help_text(name: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"medmm.pipelines.{name}").main(["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def section(text: str, title: str) -> list[str]:
    """The indented lines under ``title:`` (case-insensitive; ``Input:`` counts as ``inputs:``)."""
    match = re.search(rf"^{title}s?:[ \t]*(.*)\n((?:[ \t]+\S.*\n?)*)", text, re.IGNORECASE | re.MULTILINE)
    if match is None:
        return []
    return [line.strip() for line in [match.group(1), *match.group(2).splitlines()] if line.strip()]


def test_the_commands_are_found():
    assert {"pretrain", "ptunifier_pretrain", "finetune", "report", "retrieve", "segment", "survival", "ingest",
            "deid", "make_demo", "make_demo_pathology", "make_demo_volumes", "tile_features", "mmlego"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_says_what_the_command_does_reads_and_writes_with_an_example(name, capsys):
    text = help_text(name, capsys)
    assert text.startswith(f"usage: python -m medmm.pipelines.{name}")
    description = text.split("\n\n", 2)[1]  # after the usage block
    assert len(summary(description).split()) >= 5, f"{name}: no sentence saying what the command does"
    assert section(text, "input"), f"{name}: no inputs"
    assert section(text, "output"), f"{name}: no outputs"
    examples = section(text, "example")
    assert any(line.startswith(f"python -m medmm.pipelines.{name} ") for line in examples), f"{name}: no example"


def test_commands_without_a_config_share_the_shape(capsys):
    text = help_text("make_demo", capsys)
    # description, inputs and outputs before the options; examples after them
    order = [text.index(title) for title in ("Write the demo cohort", "\ninputs:", "\noutputs:", "\noptions:",
                                             "\nexamples:")]
    assert order == sorted(order)


def test_the_console_script_lists_each_command_on_one_line():
    out = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert set(listed) == set(COMMANDS)
    assert set(commands()) == set(COMMANDS)
    for name, line in listed.items():
        assert len(line.split()) >= 4, line  # the name and what the command does
    # listing the commands imports none of their workflows
    probe = ("import sys; from medmm.cli import main; main(['--help']); "
             "print(sorted(m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_console_script_runs_the_command_it_names(tmp_path):
    out = subprocess.run([SCRIPT, "ptunifier_pretrain", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "usage: python -m medmm.pipelines.ptunifier_pretrain" in out.stdout and "model.prompts.k_text" in out.stdout
    # an argument error is the command's own: config error, exit 2
    out = subprocess.run([SCRIPT, "survival", "--config", "configs/survival/tiny.yaml", "train.nope=1",
                          f"output_dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "unknown config key 'train.nope'" in out.stderr
    out = subprocess.run([SCRIPT, "pretrian"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "unknown command 'pretrian'" in out.stderr and "pretrain" in out.stderr
