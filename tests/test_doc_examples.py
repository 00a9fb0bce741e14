"""The documents' whole-program examples run as written.

Every ```python block of a guide in docs/migrating/ is a whole program, and so is every block
of the README and of docs/changing-code.md, long-running.md, composition.md and
flow-control.md that runs
itself (``asyncio.run(...)``), except the files of a several-file example (a block whose first
line names its file, ``# client.py``), which need a server, a worker or their sibling files
beside them. Each is run here as it stands, in its own process and an empty folder (so on the
default SQLite file there), and must exit with status 0. A guide shows a fragment that is not
a whole program in a ```text block. (The README's fragments are not run yet.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDES = sorted((ROOT / "docs" / "migrating").glob("*.md"))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


_FILE_OF_SEVERAL = re.compile(r"^# [\w/]+\.py\b")


def _blocks(path: Path) -> list[tuple[str, str]]:
    text = path.read_text()
    return [
        (f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1))
        for match in _BLOCK.finditer(text)
    ]


def _examples() -> list[tuple[str, str]]:
    found = [block for guide in GUIDES for block in _blocks(guide)]
    found += [
        (where, code)
        for document in (
            ROOT / "README.md",
            *(
                ROOT / "docs" / name
                for name in (
                    "changing-code.md",
                    "long-running.md",
                    "composition.md",
                    "flow-control.md",
                )
            ),
        )
        for where, code in _blocks(document)
        if "asyncio.run(" in code and not _FILE_OF_SEVERAL.match(code)
    ]
    return found


EXAMPLES = _examples()


def test_there_are_examples() -> None:
    assert GUIDES, "docs/migrating/ has no guide"
    assert len(EXAMPLES) >= len(GUIDES), "each guide has at least its worked example"


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_example_runs_as_written(where: str, code: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
