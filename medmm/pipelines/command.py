"""The shape every medmm command shares: a typed config from ``--config`` plus ``key=value``
overrides, ``--help`` that says what the command does and what it reads and writes, then
lists its flags, examples and every option of the config's schema, and one exit-code policy.

    command = Command("pretrain", __doc__, PretrainConfig, inputs=["a cohort folder (data.root)"],
                      outputs=["an MLflow run"], examples=["--config x.yaml trainer.max_epochs=3"])
    sys.exit(command.main(execute, argv))

The description is the module's docstring, whose first sentence is the command's summary (the
``medmm`` console script lists it). Commands without a config (the demo writers) build their
parser with :func:`command_parser`, so their ``--help`` has the same shape.

``execute(cfg, args)`` runs the workflow and returns its outcome, which is printed (an
outcome's ``str`` is its summary; an ``exit_code`` attribute, when it has one, is the
command's exit code). A config error prints ``config error: ...`` and exits 2; bad input
(:class:`medmm.io.errors.MedmmInputError`, a missing file) prints one line and exits 2. Any
failure ends the MLflow runs the command opened FAILED, tagged ``medmm.failure`` with a
one-line reason without paths (:func:`medmm.tracking.pipeline_run.fail_open_runs`).

A command whose schema depends on the config (``pretrain``: contrastive or PTUnifier)
names one schema per value of the config's top-level ``kind`` key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medmm.config.core import (
    ConfigError,
    apply_override,
    build_config,
    load_yaml,
    options_help,
)
from medmm.console import configure_console
from medmm.io.errors import MedmmInputError

KIND_KEY = "kind"


@dataclass(frozen=True)
class Command:
    """One command: ``name`` (``python -m medmm.pipelines.<name>``), its description, and its
    schema (None: a command without a config; a dict: one schema per value of ``kind``, the
    first the default)."""

    name: str
    description: str
    schema: type[BaseModel] | dict[str, type[BaseModel]] | None
    default_config: Path | None = None
    inputs: Sequence[str] = ()  # what the command reads, one line each
    outputs: Sequence[str] = ()  # what it writes or prints, one line each
    examples: Sequence[str] = ()
    subcommands: dict[str, str] = field(default_factory=dict)  # name -> what it does
    arguments: Callable[[argparse.ArgumentParser], None] | None = None  # the command's own flags

    @property
    def prog(self) -> str:
        return prog(self.name)

    def existing_default_config(self) -> Path | None:
        """The default config where it exists (commands run from the repository root)."""
        return self.default_config if self.default_config is not None and self.default_config.exists() else None

    def schema_for(self, config: Path | None, overrides: Sequence[str]) -> type[BaseModel] | None:
        """The schema of this config: the one its ``kind`` (in the YAML or as an override) names."""
        if not isinstance(self.schema, dict):
            return self.schema
        data: dict[str, Any] = load_yaml(config) if config is not None else {}
        for override in overrides:
            if override.split("=", 1)[0].strip() == KIND_KEY:
                apply_override(data, override)
        kind = data.get(KIND_KEY, next(iter(self.schema)))
        if kind not in self.schema:
            raise ConfigError(f"{KIND_KEY}: {kind!r} is not one of {', '.join(self.schema)}")
        return self.schema[kind]

    def parser(self, schema: type[BaseModel] | None) -> argparse.ArgumentParser:
        options = ["config options (override any with key=value):", *options_help(schema)] if schema else []
        parser = command_parser(self.name, self.description, self.inputs, self.outputs, self.examples, options)
        if self.subcommands:
            parser.add_argument("command", choices=tuple(self.subcommands),
                                help="; ".join(f"{name}: {what}" for name, what in self.subcommands.items()))
        if self.schema is not None:
            parser.add_argument("--config", type=Path, default=self.existing_default_config(),
                                help=f"YAML config (default: {self.default_config or 'the schema defaults'})")
        if self.arguments is not None:
            self.arguments(parser)
        if self.schema is not None:
            parser.add_argument("overrides", nargs="*", metavar="key=value",
                                help="config overrides, before or after --config, e.g. seed=1")
        return parser

    def parse_args(self, argv: Sequence[str] | None) -> argparse.Namespace:
        """The arguments; ``key=value`` overrides may stand on both sides of ``--config``."""
        schema = self.schema
        if isinstance(schema, dict):  # the schema that --help lists depends on the config's kind
            head = argparse.ArgumentParser(add_help=False)
            head.add_argument("--config", type=Path, default=self.existing_default_config())
            known, rest = head.parse_known_args(argv)
            try:
                schema = self.schema_for(known.config, [a for a in rest if "=" in a and not a.startswith("-")])
            except ConfigError:  # reported when the config is built; --help lists the default kind's options
                schema = next(iter(self.schema.values()))
        return self.parser(schema).parse_intermixed_args(argv)

    def main(self, execute: Callable[[Any, argparse.Namespace], Any], argv: Sequence[str] | None = None) -> int:
        configure_console()
        try:
            args = self.parse_args(argv)
            cfg = None
            if self.schema is not None:
                cfg = build_config(self.schema_for(args.config, args.overrides), args.config, args.overrides)
            outcome = execute(cfg, args)
        except ConfigError as exc:
            end_open_runs_failed(exc)
            print(f"config error: {one_line(exc)}", file=sys.stderr)
            return 2
        # a missing file or folder is bad input as much as an unreadable one
        except (MedmmInputError, FileNotFoundError) as exc:
            end_open_runs_failed(exc)
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        except BaseException as exc:  # a bug or an interrupt: the run ends FAILED, the traceback stays
            if not (isinstance(exc, SystemExit) and exc.code in (0, None)):  # --help exits 0
                end_open_runs_failed(exc)
            raise
        text = str(outcome)
        if text:  # the other processes of a multi-process run print nothing
            print(text)
        return getattr(outcome, "exit_code", 0)


def prog(name: str) -> str:
    """How a command is started: ``python -m medmm.pipelines.<name>`` (or ``medmm <name>``)."""
    return f"python -m medmm.pipelines.{name}"


def command_parser(name: str, description: str, inputs: Sequence[str], outputs: Sequence[str],
                   examples: Sequence[str], epilog: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser of command ``name`` with the help every command shares: what it does (the
    ``description``), its inputs and outputs, then the options and, after them, examples
    (``examples`` are the arguments after the command) and the ``epilog`` lines."""
    what = [description.strip(), ""]
    for title, lines in (("inputs", inputs), ("outputs", outputs)):
        if lines:
            what += [f"{title}:", *(f"  {line}" for line in lines), ""]
    tail = ["examples:", *(f"  {prog(name)} {example}".rstrip() for example in examples), ""] if examples else []
    return argparse.ArgumentParser(prog=prog(name), description="\n".join(what).rstrip(),
                                   epilog="\n".join([*tail, *epilog]).rstrip() or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def summary(description: str) -> str:
    """The first sentence of a command's description (its docstring), without a leading
    ````python -m ...``: `` that names the command."""
    first = " ".join(description.strip().split("\n\n", 1)[0].split())
    if first.startswith("``python -m") and "``: " in first:
        first = first.split("``: ", 1)[1]
    first = first.split(". ", 1)[0].rstrip(".")
    return first[:1].upper() + first[1:]


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a multi-line message is joined)."""
    return " ".join(str(exc).split())


def end_open_runs_failed(exc: BaseException) -> None:
    """End the MLflow runs the failed command opened as FAILED, with a one-line reason tag."""
    tracking = sys.modules.get("medmm.tracking.pipeline_run")
    if tracking is not None:  # not imported: the command opened no run (and --help stays fast)
        tracking.fail_open_runs(exc)


def add_resume_flag(parser: argparse.ArgumentParser) -> None:
    """``--resume`` / ``--resume-new`` of the commands that train with :mod:`medmm.training.lightning_run`
    (both set ``args.resume``: True, or ``"new"`` for a continuation in a new MLflow run)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue the last run of output_dir from its newest checkpoint (same MLflow run); "
                            "a FINISHED run is refused")
    group.add_argument("--resume-new", dest="resume", action="store_const", const="new",
                       help="continue the last run of output_dir from its newest checkpoint in a new MLflow run "
                            "(e.g. to train a FINISHED run further)")
