"""The types users' code sees (issue 18): ``mypy --strict`` on the user-style modules of
tests/typing/. The examples (and the copies of the README's Quick start and of the checkout
saga of docs/getting-started.md, with ``assert_type`` lines on their calls) must be clean;
tests/typing/mistakes.py must get exactly the errors its ``# E: <code>`` comments name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
CLEAN = ["examples.py", "readme_quickstart.py", "checkout.py"]
#: ``path:line: error: message  [code]``
_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")
_EXPECTED = re.compile(r"#\s*E:\s*(?P<codes>[a-z-]+(?:,\s*[a-z-]+)*)\s*$")


def _mypy(*files: str) -> tuple[str, int]:
    """Run the venv's mypy (strict, with the project's configuration) on tests/typing files, as
    a user's mypy would check their code against the installed package."""
    out, err, status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--no-error-summary",
            "--show-error-codes",
            "--no-pretty",
            *(str(TYPING / f) for f in files),
        ]
    )
    assert not err, err
    return out, status


def _errors(out: str) -> set[tuple[str, int, str]]:
    found = set()
    for line in out.splitlines():
        match = _ERROR.match(line)
        if match:
            found.add((Path(match["path"]).name, int(match["line"]), match["code"]))
    return found


@pytest.fixture(scope="module")
def mypy_run() -> tuple[str, int]:
    # one run for every file: mypy's start (pydantic, the package) dominates its time
    return _mypy(*CLEAN, "mistakes.py")


@pytest.mark.parametrize("name", CLEAN)
def test_examples_type_check_clean(mypy_run: tuple[str, int], name: str) -> None:
    out, _ = mypy_run
    mine = [line for line in out.splitlines() if Path(line.split(":", 1)[0]).name == name]
    assert mine == [], "\n".join(mine)


def test_mistakes_get_exactly_the_expected_errors(mypy_run: tuple[str, int]) -> None:
    out, status = mypy_run
    expected = set()
    lines = (TYPING / "mistakes.py").read_text().splitlines()
    for number, text in enumerate(lines, start=1):
        match = _EXPECTED.search(text)
        if match:
            for code in match["codes"].split(","):
                expected.add(("mistakes.py", number, code.strip()))
    assert len(expected) >= 15  # the markers were read
    found = _errors(out)
    assert found == expected, (
        f"missing: {sorted(expected - found)}\nunexpected: {sorted(found - expected)}\n{out}"
    )
    assert status == 1


def test_the_package_itself_is_strict_clean() -> None:
    out, err, status = mypy_api.run(["--config-file", str(ROOT / "pyproject.toml")])
    assert status == 0, out + err


def test_package_ships_py_typed() -> None:
    """PEP 561: without the marker a user's mypy ignores the package's annotations. The wheel
    takes every file of the package directory (``[tool.hatch.build.targets.wheel]``)."""
    assert (ROOT / "sagakit" / "py.typed").is_file()


def _code_block(document: Path, heading: str) -> str:
    text = document.read_text()
    start = text.index("```python\n", text.index(heading)) + len("```python\n")
    return text[start : text.index("```\n", start)]


def _without_typing_lines(code: str) -> str:
    """The copy as the document has it: without its assert_type lines, the lines marked
    ``typing-only`` and ``# fmt:`` switches, blank runs collapsed."""
    kept = [
        line
        for line in code.splitlines()
        if "assert_type(" not in line
        and "typing-only" not in line
        and line.strip() not in ("# fmt: off", "# fmt: on")
    ]
    return re.sub(r"\n{2,}", "\n\n", "\n".join(kept)).strip()


@pytest.mark.parametrize(
    ("copy", "document", "heading"),
    [
        ("readme_quickstart.py", "README.md", "## Quick start"),
        ("checkout.py", "docs/getting-started.md", "## A checkout saga"),
    ],
)
def test_copies_match_the_documents(copy: str, document: str, heading: str) -> None:
    """The typed copies are the documents' code: when the document changes, copy its new code
    into tests/typing/ (keeping the assert_type lines on its calls)."""
    source = _code_block(ROOT / document, heading)
    mine = (TYPING / copy).read_text()
    # the copy imports assert_type alongside the document's own imports
    mine = mine.replace("from typing import Any, assert_type", "from typing import Any")
    mine = mine.replace("from typing import assert_type\n", "")
    assert _without_typing_lines(mine) == _without_typing_lines(source), (
        f"tests/typing/{copy} is no longer the code of {document} ({heading}): copy the "
        "document's code block into it again, with assert_type lines on its calls"
    )
