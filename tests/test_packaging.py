"""The package a user installs (issue 18): a wheel built from this tree, installed in a clean
virtual environment with nothing but its own dependencies from the package index, runs
``sagakit demo`` and the commands the demo prints, exactly as printed; it does not bring
asyncpg (PostgreSQL is the ``sagakit[postgres]`` extra), says how to get it when a
``postgresql://`` URL needs it, and reports the one version written in ``sagakit/__init__.py``.

One module-scoped venv serves every test here: building and installing takes a while on a slow
machine, hence the generous timeouts (and no timing asserts).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: building the wheel and installing pydantic, click and croniter from the index
INSTALL_TIMEOUT = 900
RUN_TIMEOUT = 300


def source_version() -> str:
    """The version as written, once, in the source (without importing this tree's sagakit)."""
    text = (ROOT / "sagakit" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert found is not None, "sagakit/__init__.py must assign __version__ a string literal"
    return found.group(1)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH (it would import this source tree
    instead of the installed wheel), no activated venv, and a PATH without any venv's bin."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    venv_bins = {str(Path(sys.executable).parent)}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and p not in venv_bins
    )
    env.update(PYTHONIOENCODING="utf-8", NO_COLOR="1", **extra)
    return env


def run(
    args: list[str], *, cwd: Path, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (
        f"{result.args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


@dataclass
class Installed:
    """A project folder, as in the README: ``python -m venv .venv``, then the wheel installed
    with ``.venv/bin/pip``; the venv is not activated."""

    home: Path  # where the user types
    venv: Path
    wheel: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def sagakit(self) -> str:
        return str(self.venv / "bin" / "sagakit")

    def shell(self, line: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``line`` typed in a bash shell in the project folder."""
        return run(["bash", "-c", line], cwd=self.home, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    dist = base / "dist"
    # pip builds the wheel with the build backend of pyproject.toml (hatchling), in isolation
    ok(
        run(
            [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(dist), "-q"],
            cwd=base,
            timeout=INSTALL_TIMEOUT,
        )
    )
    wheels = list(dist.glob("sagakit-*.whl"))
    assert len(wheels) == 1, wheels
    home = base / "shop"
    home.mkdir()
    # a clean venv: no --system-site-packages, so it sees nothing of this test's environment
    ok(run([sys.executable, "-m", "venv", ".venv"], cwd=home, timeout=INSTALL_TIMEOUT))
    venv = home / ".venv"
    ok(
        run(
            [str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])],
            cwd=home,
            timeout=INSTALL_TIMEOUT,
        )
    )
    return Installed(home=home, venv=venv, wheel=wheels[0])


def test_the_wheel_is_named_after_the_one_version(installed: Installed) -> None:
    assert installed.wheel.name.startswith(f"sagakit-{source_version()}-")


def test_sagakit_version_prints_the_one_version(installed: Installed) -> None:
    version = source_version()
    result = ok(run([installed.sagakit, "--version"], cwd=installed.home))
    assert result.stdout.strip() == f"sagakit, version {version}"
    # the installed metadata, sagakit.__version__ and the command agree
    probe = ok(
        run(
            [
                installed.python,
                "-c",
                "import importlib.metadata, sagakit; "
                "print(importlib.metadata.version('sagakit'), sagakit.__version__, "
                "sagakit.__file__)",
            ],
            cwd=installed.home,
        )
    )
    metadata, attribute, file = probe.stdout.split()
    assert (metadata, attribute) == (version, version)
    assert Path(file).is_relative_to(installed.venv)  # the wheel, not this source tree


def test_sqlite_users_get_no_asyncpg(installed: Installed) -> None:
    listed = ok(run([installed.python, "-m", "pip", "list", "--format=json"], cwd=installed.home))
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"sagakit", "pydantic", "click", "croniter"} <= names
    assert "asyncpg" not in names
    ok(run([installed.python, "-c", "import sagakit, sagakit.cli"], cwd=installed.home))


#: imports every module of the installed sagakit; a module may need an extra that is not
#: installed (restate, otel, sqlalchemy...), but only the PostgreSQL store may need asyncpg;
#: a module that fails otherwise (not an ImportError) fails the probe
IMPORT_ALL = """
import importlib, json, pkgutil, sagakit
imported, missing = [], {}
for info in pkgutil.walk_packages(sagakit.__path__, "sagakit."):
    if info.name.endswith(".__main__"):  # a program: importing it runs it
        continue
    try:
        importlib.import_module(info.name)
    except ImportError as exc:
        missing[info.name] = exc.name
    else:
        imported.append(info.name)
print(json.dumps({"imported": imported, "missing": missing}))
"""


#: the modules that talk to PostgreSQL, and only they, need asyncpg (sagakit[postgres])
_POSTGRES_MODULES = ("sagakit.stores.postgres", "sagakit.transports.postgres")


def test_only_the_postgresql_modules_import_asyncpg(installed: Installed) -> None:
    result = ok(run([installed.python, "-c", IMPORT_ALL], cwd=installed.home))
    found = json.loads(result.stdout)
    needs_asyncpg = {m for m, name in found["missing"].items() if name == "asyncpg"}
    assert needs_asyncpg, "the PostgreSQL store imports asyncpg"  # the probe sees a missing one
    assert all(m.startswith(_POSTGRES_MODULES) for m in needs_asyncpg), needs_asyncpg
    for module in (
        "sagakit.cli",
        "sagakit.engine",
        "sagakit.stores",
        "sagakit.worker",
        "sagakit.transports",
        "sagakit.participant",
        "sagakit.relay",
    ):
        assert module in found["imported"], found["missing"]


PG_ENGINE = """
import asyncio
from sagakit import Engine, StoreError

async def main() -> None:
    try:
        async with Engine("postgresql://shop@127.0.0.1:1/shop"):
            print("opened")
    except StoreError as exc:
        print(f"StoreError: {exc}")

asyncio.run(main())
"""


def test_a_postgresql_url_without_asyncpg_says_which_extra_to_install(
    installed: Installed,
) -> None:
    hint = "pip install 'sagakit[postgres]'"
    result = ok(run([installed.python, "-c", PG_ENGINE], cwd=installed.home))
    assert result.stdout.startswith("StoreError: "), result.stdout
    assert hint in result.stdout
    listed = run(
        [installed.sagakit, "list", "--db", "postgresql://shop@127.0.0.1:1/shop"],
        cwd=installed.home,
    )
    assert listed.returncode == 1
    assert "Traceback" not in listed.stderr
    assert hint in listed.stderr


def test_the_demo_runs_and_its_commands_work_as_printed(installed: Installed) -> None:
    # the README's way: `.venv/bin/sagakit demo` in the project folder, venv not activated
    result = ok(installed.shell(".venv/bin/sagakit demo --keep"))
    out = result.stdout
    assert "order-1001  Checkout  COMPLETED" in out
    assert "order-1002  Checkout  COMPENSATED" in out
    assert "order-1003  Checkout  COMPLETED" in out
    assert "recovered and COMPLETED" in out
    # the CLI configures logging: the saga that failed for good is logged on stderr
    assert "sagakit: WARNING sagakit.saga: step ChargeCard" in result.stderr
    found = re.search(r"The demo folder is kept: (\S+)", out)
    assert found is not None, out
    folder = Path(found.group(1))
    try:
        commands = [line.strip() for line in out.splitlines() if ".venv/bin/sagakit " in line]
        assert [shlex.split(c)[:2] for c in commands] == [
            [".venv/bin/sagakit", "list"],
            [".venv/bin/sagakit", "show"],
        ], out
        listed = ok(installed.shell(commands[0]))
        for saga_id in ("order-1001", "order-1002", "order-1003"):
            assert saga_id in listed.stdout
        shown = ok(installed.shell(commands[1]))
        assert "order-1003" in shown.stdout
        assert "ChargeCard" in shown.stdout
        # the hint: activate the venv, then plain `sagakit` works
        hint = re.search(r"`(source \S+)` first, then type plain `sagakit`", out)
        assert hint is not None, out
        assert hint.group(1) == "source .venv/bin/activate"
        plain = commands[0].replace(".venv/bin/sagakit", "sagakit", 1)
        activated = ok(installed.shell(f"{hint.group(1)} && {plain}"))
        assert "order-1003" in activated.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_in_an_activated_venv_the_demo_prints_plain_sagakit(installed: Installed) -> None:
    result = ok(installed.shell("source .venv/bin/activate && sagakit demo"))
    assert "order-1003  Checkout  COMPLETED" in result.stdout
    assert "(keep it with --keep: sagakit demo --keep)" in result.stdout
    assert "activate" not in result.stdout
