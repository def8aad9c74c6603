"""mkdocs hook: the reference pages that are generated from the code at build time, so that
they cannot drift from it. A page holds a marker on a line of its own; the hook replaces it:

    <!-- medmm:commands -->       each command's ``--help``: what it does, its flags, examples
    <!-- medmm:config -->         one table per command: every option of its config schema with
                                  type, default and description, as ``--help`` lists them
                                  (:func:`medmm.config.core.options_help`)
    <!-- medmm:cohort-spec -->    every field of a cohort spec (:class:`medmm.cohort.spec.CohortSpec`
                                  and the models it holds), from the pydantic schema

The commands are the modules of :mod:`medmm.pipelines`; a new command appears without an
edit here. A line of ``options_help`` that this hook cannot read back exactly fails the build.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import pkgutil
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import medmm.pipelines
from medmm.cohort.spec import CohortSpec
from medmm.config.core import options_help

# reading order on the pages; a command not listed here follows, alphabetically
ORDER = ("make_demo", "make_demo_pathology", "make_demo_volumes", "ingest", "deid", "pretrain",
         "ptunifier_pretrain", "finetune", "report", "retrieve", "tile_features", "survival", "mmlego", "segment")
NOT_COMMANDS = {"command", "__main__"}
OPTION_LINE = re.compile(r"^  (?P<name>\S+) \((?P<type>.*?), default (?P<default>.*?)\)(?:  (?P<desc>.*))?$")
CODE_SPAN = re.compile(r"(`+).+?\1")
MARKER = re.compile(r"^<!-- medmm:(?P<what>[\w-]+) -->$", re.M)


def command_names() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(medmm.pipelines.__path__)
             if not m.name.startswith("_") and m.name not in NOT_COMMANDS]
    return [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)


def help_text(module: types.ModuleType) -> str:
    """``--help`` of a command; for a command with a config schema without the option list,
    which the config reference gives as a table."""
    command = getattr(module, "COMMAND", None)
    if command is not None:
        return command.parser(None).format_help()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        module.main(["--help"])
    return out.getvalue()


def schemas(module: types.ModuleType) -> dict[str, type[BaseModel]]:
    """The config schemas of a command: {"": schema}, or one per value of its ``kind`` key."""
    schema = getattr(getattr(module, "COMMAND", None), "schema", None)
    if schema is None:
        return {}
    return dict(schema) if isinstance(schema, dict) else {"": schema}


def escape(text: str) -> str:
    """Markdown text for a table cell: pipes, angle brackets and braces (attribute lists)
    escaped outside `code spans`."""
    def plain(part: str) -> str:
        for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("{", "&#123;"), ("}", "&#125;")):
            part = part.replace(char, entity)
        return part.replace("|", "\\|")

    out, pos = [], 0
    for span in CODE_SPAN.finditer(text):
        out += [plain(text[pos:span.start()]), span[0]]
        pos = span.end()
    return "".join(out) + plain(text[pos:])


def code(text: str) -> str:
    """A code span that holds any text (a backtick inside gets a longer fence)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def option_rows(schema: type[BaseModel]) -> list[dict[str, str]]:
    """The options of a schema as ``--help`` prints them, each line read back exactly."""
    rows = []
    for line in options_help(schema):
        match = OPTION_LINE.match(line)
        desc = f"  {match['desc']}" if match and match["desc"] is not None else ""
        if match is None or f"  {match['name']} ({match['type']}, default {match['default']}){desc}" != line:
            raise ValueError(f"config reference: cannot read the options_help line {line!r} of {schema.__name__}")
        rows.append({k: v or "" for k, v in match.groupdict().items()})
    return rows


def options_table(schema: type[BaseModel]) -> str:
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for row in option_rows(schema):
        default = "required" if row["default"] == repr(PydanticUndefined) else code(row["default"])
        lines.append(f"| {code(row['name'])} | {code(row['type'])} | {default} | {escape(row['desc'])} |")
    return "\n".join(lines)


def commands_page() -> str:
    sections = []
    for name in command_names():
        module = importlib.import_module(f"medmm.pipelines.{name}")
        config = (f"\n\nIts config options: [configuration reference](config.md#{name})."
                  if schemas(module) else "")
        sections.append(f"## {name}\n\n```text\n{help_text(module).rstrip()}\n```{config}")
    return "\n\n".join(sections)


def config_page() -> str:
    sections = []
    seen: dict[type[BaseModel], str] = {}
    for name in command_names():
        module = importlib.import_module(f"medmm.pipelines.{name}")
        kinds = schemas(module)
        if not kinds:
            continue
        parts = [f"## {name}"]
        for kind, schema in kinds.items():
            title = f"`{name}`" + (f" with `kind: {kind}`" if kind else "")
            if kind:
                parts.append(f"### {name}, kind: {kind}")
            if schema in seen:
                parts.append(f"{title} takes the options of {seen[schema]} (schema `{schema.__name__}`).")
                continue
            seen[schema] = title
            parts.append(f"Schema `{schema.__module__}.{schema.__name__}`.\n\n{options_table(schema)}")
        sections.append("\n\n".join(parts))
    return "\n\n".join(sections)


def nested_models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``list[FileRule]``, ``SplitSpec | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in nested_models(arg)]


def type_name(annotation: object) -> str:
    """``list[FileRule]``, ``str | None``, ``'rows' | 'columns'``: a type as a reader writes it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(type_name(a) for a in args)}]"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def spec_table(model: type[BaseModel]) -> str:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        links = ", ".join(f"[{m.__name__}](#{m.__name__.lower()})" for m in nested_models(field.annotation))
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            default = code(str(value) if isinstance(value, Path) else repr(value))
        desc = escape(field.description or "") + (f" (see {links})" if links else "")
        lines.append(f"| {code(name)} | {code(type_name(field.annotation))} | {default} | {desc} |")
    return "\n".join(lines)


def cohort_spec_page() -> str:
    order: list[type[BaseModel]] = []
    todo = [CohortSpec]
    while todo:
        model = todo.pop(0)
        if model in order:
            continue
        order.append(model)
        todo += [m for f in model.model_fields.values() for m in nested_models(f.annotation)]
    sections = []
    for model in order:
        paragraphs = inspect.cleandoc(model.__doc__ or "").split("\n\n")
        doc = "\n\n".join(escape(" ".join(p.split())) for p in paragraphs)
        sections.append("\n\n".join(part for part in (f"## {model.__name__}", doc, spec_table(model)) if part))
    return "\n\n".join(sections)


PAGES = {"commands": commands_page, "config": config_page, "cohort-spec": cohort_spec_page}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def generated(match: re.Match) -> str:
        what = match["what"]
        if what not in PAGES:
            raise ValueError(f"{page.file.src_uri}: unknown generated section {what!r} (known: {', '.join(PAGES)})")
        return PAGES[what]()

    return MARKER.sub(generated, markdown)
