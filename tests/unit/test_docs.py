"""The README and docs/ name only things that exist: paths, functions, make targets, CLI commands,
settings, links; and the configuration table in docs/operations.md is the one ``Settings`` generates.

When code moves, these tests name each doc line to update.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import typer.main

from textgen_cli.main import app
from textgen_core import settings_doc
from textgen_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_DIRS = ("api", "bench", "docs", "examples", "monitoring", "tests", "textgen_cli", "textgen_core", "workers")
TOP_FILES = ("celeryconfig.py", "docker-compose.yml", "Dockerfile.api", "Dockerfile.worker", "Makefile",
             "pyproject.toml", ".env.example")

_DIRS = "|".join(TOP_DIRS)
_FILES = "|".join(re.escape(f) for f in TOP_FILES)
PATH = re.compile(rf"(?<![\w/.-])((?:{_DIRS})/[\w./-]*|(?:{_FILES})\b)(?:::([\w.]+))?")
MODULE_NAME = re.compile(rf"(?<![\w./-])((?:{_DIRS})(?:\.\w+)+):(\w+)\b")
TEST_NAME = re.compile(r"`(test_\w+)`")
MAKE = re.compile(r"(?<![\w/-])make +([a-z][\w-]*)")
COMMAND = re.compile(r"(?<![\w./-])(?:\.venv/bin/)?textgen +([a-z][\w-]*)")
VARIABLE = re.compile(r"\bTEXTGEN_[A-Z0-9][A-Z0-9_]*[A-Z0-9]")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SHELL = ("bash", "console", "sh", "shell")
SPAN = re.compile(r"`([^`\n]+)`")


def rel(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


def code(text: str) -> str:
    """The text of every shell block and inline code span: where commands are written (not the
    blocks of program output, which may say "make" in English)."""
    blocks = [body for lang, body in FENCE.findall(text) if lang.strip() in SHELL]
    prose = FENCE.sub("", text)
    return "\n".join([*blocks, *SPAN.findall(prose)])


@cache
def defined_names(path: Path) -> frozenset[str]:
    """Top-level functions, classes and assignments, and ``Class.member``, of one Python file."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for inner in node.body:
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}.{inner.name}")
                elif isinstance(inner, ast.AnnAssign) and isinstance(inner.target, ast.Name):
                    names.add(f"{node.name}.{inner.target.id}")
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def test_the_configuration_table_is_the_generated_one() -> None:
    text = OPERATIONS.read_text()
    assert settings_doc.rewrite(text) == text, (
        f"docs/operations.md's configuration table differs from Settings: run `{settings_doc.COMMAND}`")


def test_the_configuration_doc_lists_every_setting() -> None:
    text = OPERATIONS.read_text()
    missing = [settings_doc.env_name(name) for name in Settings.model_fields
               if f"| `{settings_doc.env_name(name)}` |" not in text]
    assert not missing, f"settings missing from docs/operations.md: {missing}; run `{settings_doc.COMMAND}`"
    assert all(field.description for field in Settings.model_fields.values()), "a setting without a description"


def test_the_table_generator_writes_between_the_markers() -> None:
    stale = f"before\n{settings_doc.BEGIN}\n| old |\n{settings_doc.END}\nafter\n"
    written = settings_doc.rewrite(stale)
    assert written.startswith("before\n") and written.endswith("after\n")
    assert "| old |" not in written and "`TEXTGEN_REDIS_URL`" in written
    assert settings_doc.rewrite(written) == written
    with pytest.raises(ValueError, match="markers"):
        settings_doc.rewrite("no table here\n")


def test_the_table_generator_check_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "operations.md"
    doc.write_text(f"{settings_doc.BEGIN}\n| old |\n{settings_doc.END}\n")
    assert settings_doc.main(["--check", str(doc)]) == 1
    assert "run `make docs`" in capsys.readouterr().err
    assert settings_doc.main(["--write", str(doc)]) == 0
    assert settings_doc.main(["--check", str(doc)]) == 0


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_code_blocks_are_closed(doc: Path) -> None:
    fences = [n for n, line in enumerate(doc.read_text().splitlines(), 1) if line.startswith("```")]
    assert len(fences) % 2 == 0, f"{rel(doc)}: an unclosed code block (fences on lines {fences})"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_named_paths_and_functions_exist(doc: Path) -> None:
    text = doc.read_text()
    wrong: list[str] = []
    for match in PATH.finditer(text):
        path, name = match.group(1).rstrip("./"), match.group(2)
        if not (ROOT / path).exists():
            wrong.append(f"{path}: no such file")
        elif name and name not in defined_names(ROOT / path):
            wrong.append(f"{path}::{name}: not defined there")
    for module, name in MODULE_NAME.findall(text):
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists() or name not in defined_names(path):
            wrong.append(f"{module}:{name}: not found")
    test_names = {n for p in (ROOT / "tests").rglob("test_*.py") for n in defined_names(p)}
    wrong += [f"{name}: no such test" for name in TEST_NAME.findall(text) if name not in test_names]
    assert not wrong, f"{rel(doc)} names what does not exist: {wrong}"


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", makefile, re.M))


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_make_targets_exist(doc: Path) -> None:
    missing = set(MAKE.findall(code(doc.read_text()))) - make_targets()
    assert not missing, f"{rel(doc)} names make targets the Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_textgen_commands_exist(doc: Path) -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    missing = set(COMMAND.findall(code(doc.read_text()))) - commands
    assert not missing, f"{rel(doc)} names textgen commands the CLI lacks: {sorted(missing)}"


def documented_other_variables() -> set[str]:
    """The variables of the hand-written table of non-Settings variables in docs/operations.md."""
    section = OPERATIONS.read_text().split("Variables read outside `Settings`", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"^\| `(TEXTGEN_\w+)` \|", section, re.M))


def test_non_settings_variables_are_not_settings() -> None:
    others = documented_other_variables()
    assert {"TEXTGEN_URL", "TEXTGEN_API_KEY"} <= others
    assert not others & {settings_doc.env_name(name) for name in Settings.model_fields}


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_named_variables_are_settings_or_documented(doc: Path) -> None:
    known = {settings_doc.env_name(name) for name in Settings.model_fields} | documented_other_variables()
    unknown = set(VARIABLE.findall(doc.read_text())) - known
    assert not unknown, f"{rel(doc)} names variables that are neither settings nor documented: {sorted(unknown)}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_relative_links_resolve(doc: Path) -> None:
    broken: list[str] = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{rel(doc)} has broken links: {broken}"


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [rel(doc) for doc in DOCS[1:] if f"({rel(doc)}" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"
