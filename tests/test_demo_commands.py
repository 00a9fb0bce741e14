"""The commands ``sagakit demo`` prints must work when typed as printed (issue 18): plain
``sagakit`` only when PATH finds this very install's console script, else the script's path
(``.venv/bin/sagakit`` right after the README's install) with a hint to activate the venv.
Each case is a real venv (without pip: only its layout matters) and a real PATH to search.
(tests/test_packaging.py runs the printed commands of the installed wheel.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sagakit.demo import sagakit_command

HINT = "(or `source .venv/bin/activate` first, then type plain `sagakit`)"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with a venv in .venv whose bin holds a ``sagakit`` console script."""
    home = tmp_path_factory.mktemp("shop")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", ".venv"], cwd=home, check=True, timeout=300
    )
    script = home / ".venv" / "bin" / "sagakit"
    script.write_text("#!/bin/sh\n", encoding="utf-8")
    script.chmod(0o755)
    return home


def python(project: Path) -> str:
    return str(project / ".venv" / "bin" / "python")


def test_a_venv_that_is_not_activated_gets_its_script_path_and_a_hint(project: Path) -> None:
    assert sagakit_command(python(project), "/usr/local/bin:/usr/bin:/bin", project) == (
        ".venv/bin/sagakit",
        HINT,
    )


def test_an_activated_venv_gets_plain_sagakit(project: Path) -> None:
    path = os.pathsep.join([str(project / ".venv" / "bin"), "/usr/bin", "/bin"])
    assert sagakit_command(python(project), path, project) == ("sagakit", None)


def test_another_sagakit_first_on_path_is_not_this_one(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "bin"
    other.mkdir()
    (other / "sagakit").write_text("#!/bin/sh\n", encoding="utf-8")
    (other / "sagakit").chmod(0o755)
    path = os.pathsep.join([str(other), str(project / ".venv" / "bin")])
    assert sagakit_command(python(project), path, project) == (".venv/bin/sagakit", HINT)


def test_a_link_on_path_to_this_script_is_plain_sagakit(project: Path, tmp_path: Path) -> None:
    # pipx and `uv tool` put a link to the venv's script in ~/.local/bin
    local_bin = tmp_path / "local-bin"
    local_bin.mkdir()
    (local_bin / "sagakit").symlink_to(project / ".venv" / "bin" / "sagakit")
    assert sagakit_command(python(project), str(local_bin), project) == ("sagakit", None)


def test_outside_the_project_folder_the_path_is_absolute(project: Path, tmp_path: Path) -> None:
    command, hint = sagakit_command(python(project), "/usr/bin", tmp_path)
    assert command == str(project / ".venv" / "bin" / "sagakit")
    activate = project / ".venv" / "bin" / "activate"
    assert hint == f"(or `source {activate}` first, then type plain `sagakit`)"


def test_in_the_bin_folder_itself_the_script_is_dot_slash(project: Path) -> None:
    command, _ = sagakit_command(python(project), "/usr/bin", project / ".venv" / "bin")
    assert command == "./sagakit"


def test_a_path_with_a_space_is_quoted(tmp_path: Path) -> None:
    home = tmp_path / "my shop"
    bin_dir = home / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "sagakit").write_text("#!/bin/sh\n", encoding="utf-8")
    command, hint = sagakit_command(str(bin_dir / "python"), "/usr/bin", tmp_path)
    assert command == "'my shop/env/bin/sagakit'"
    assert hint is None  # no activate script: not a venv made by python -m venv


def test_without_a_console_script_it_is_python_dash_m(tmp_path: Path) -> None:
    # a source checkout run as `python -m sagakit.cli demo`, with no sagakit script installed
    bin_dir = tmp_path / "py" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    assert sagakit_command(str(bin_dir / "python"), "/usr/bin", tmp_path) == (
        "py/bin/python -m sagakit.cli",
        None,
    )
