"""The documentation site and the README: ``mkdocs build --strict`` passes (a broken link, a
broken anchor, a missing included file or a page left out of the nav fails it), the reference
pages generated at build time hold every option of the typed schemas, and the README stays
short, links only to files that exist and, like the docs, speaks of the software only."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from medmm.cohort.spec import CohortSpec
from medmm.workflows.contrastive.config import PretrainConfig
from medmm.workflows.ptunifier.config import PTUnifierPretrainConfig

REPO = Path(__file__).resolve().parents[1]
ROW = re.compile(r"<tr>\s*<td><code>(?P<name>[^<]+)</code></td>\s*<td><code>(?P<type>[^<]*)</code></td>\s*"
                 r"<td>(?P<default>.*?)</td>", re.S)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
# narration of how the software came to be, which the project's text leaves out
HISTORY = re.compile(r"\b(sessions?|issue \d+|previously|used to|earlier|helpers?)\b", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def leaf_options(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of a schema's leaf options, walked from the pydantic fields."""
    names = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names += leaf_options(ann, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def section(page: str, heading_id: str) -> str:
    """The HTML of one section: from the heading with this id to the next heading of its level."""
    start = page.index(f'id="{heading_id}"')
    level = int(page[page.rfind("<h", 0, start) + 2])
    end = re.compile(f"<h[1-{level}][ >]").search(page, start)
    return page[start:end.start() if end else len(page)]


def rows(fragment: str) -> dict[str, tuple[str, str]]:
    return {html.unescape(m["name"]): (html.unescape(m["type"]), html.unescape(re.sub("<[^>]+>", "", m["default"])))
            for m in ROW.finditer(fragment)}


def test_config_reference_lists_every_pretrain_option_with_its_default(site):
    page = (site / "reference/config/index.html").read_text(encoding="utf-8")
    for kind, schema in (("contrastive", PretrainConfig), ("ptunifier", PTUnifierPretrainConfig)):
        table = rows(section(page, f"pretrain-kind-{kind}"))
        assert sorted(table) == sorted(leaf_options(schema)), kind
        assert table["seed"][1] == "0"
    contrastive = rows(section(page, "pretrain-kind-contrastive"))
    assert contrastive["trainer.max_epochs"][1] == repr(PretrainConfig().trainer.max_epochs)
    assert contrastive["loss.name"][0] == "clip | symile"
    assert contrastive["data.root"][1] == repr(str(PretrainConfig().data.root))


def test_config_reference_has_a_section_per_command_with_a_config(site):
    page = (site / "reference/config/index.html").read_text(encoding="utf-8")
    for command in ("pretrain", "ptunifier_pretrain", "finetune", "report", "retrieve", "segment", "survival"):
        assert f'id="{command}"' in page, command
    assert 'id="ingest"' not in page  # a command without a config schema has no table


def test_commands_page_holds_every_commands_help(site):
    page = html.unescape((site / "reference/commands/index.html").read_text(encoding="utf-8"))
    for module in sorted((REPO / "medmm/pipelines").glob("*.py")):
        if module.stem in {"__init__", "__main__", "command"}:
            continue
        assert f"usage: python -m medmm.pipelines.{module.stem}" in page, module.stem
    assert "--spec SPEC" in page and "--allow-burned-in" in page


def test_cohort_spec_reference_lists_every_field_of_every_model(site):
    page = (site / "reference/cohort-spec/index.html").read_text(encoding="utf-8")
    models, todo = [], [CohortSpec]
    while todo:
        model = todo.pop()
        if model in models:
            continue
        models.append(model)
        for field in model.model_fields.values():
            todo += [a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                     if isinstance(a, type) and issubclass(a, BaseModel)]
    assert len(models) >= 5  # CohortSpec, SplitSpec, FileRule, TableSpec, LinkRule
    for model in models:
        table = rows(section(page, model.__name__.lower()))
        assert sorted(table) == sorted(model.model_fields), model.__name__
    assert rows(section(page, "cohortspec"))["name"][1] == "required"


def test_readme_is_short_and_links_only_to_files_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 210
    targets = [m["target"] for m in LINK.finditer(readme)]
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://", t) and not t.startswith("#")]
    assert any(t.startswith("docs/") for t in local)
    for target in local:
        assert (REPO / target).is_file(), f"README links to {target}, which does not exist"


@pytest.mark.parametrize("text", ["README.md", "ARCHITECTURE.md", "SECURITY.md", "docs"])
def test_project_text_speaks_of_the_software_only(text):
    files = sorted((REPO / text).rglob("*.md")) if (REPO / text).is_dir() else [REPO / text]
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not HISTORY.search(line), f"{path.relative_to(REPO)}:{number}: {line.strip()}"
