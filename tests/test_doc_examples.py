"""Every code example of the README and of docs/ runs as written.

The collector reads README.md and every docs/**/*.md. Each ```python block is an example, of
one of two kinds:

* A whole program: written to ``example.py`` in an empty folder and run there in its own
  process (so the default SQLite file lands in that folder); it must exit with status 0. A
  block that only defines things (a step, a retry policy) runs too: its imports must resolve.
* A file of a several-file example, named by its first line (``# sagas.py``, ``# client.py``).
  The named blocks of a document (a file name seen again starts another example) are written
  side by side into one folder and run the way the document says, in its order:

  - a ```toml or ```yaml block named the same way (``# hypercorn.toml``) is a file of the
    example too, written beside the others (never run);
  - a ```bash block between two of those files runs there, command by command (a line ending
    in ``\\`` goes on on the next): ``sagakit worker ...`` and ``hypercorn ...`` in the
    background, as a reader leaves them running in another terminal (stopped at the end;
    hypercorn, with SIGINT as docs/restate.md says, is waited for until it says it is
    running), anything else to its end (exit status 0);
    ``export SAGAKIT_DB=...`` is skipped, because the test sets ``SAGAKIT_DB`` to a SQLite
    file of the folder (workers in several processes share it as they would a PostgreSQL
    database; no example here needs PostgreSQL's own features);
  - a file runs with Python at its place when it runs itself (``asyncio.run(`` or
    ``__main__``) or no other file imports it (a file of definitions must at least import),
    unless a bash block of the example runs it by name;
  - a file named ``test_*.py`` runs with pytest after the rest.

A block that is not Python meant to run (a signature, a CLI session, an output) is shown as
```text or ```console. Nothing is set up behind the reader's back: what a block needs is in the
block (or in its sibling files), except a Restate server, which a reader of docs/restate.md
runs on their own: for the examples that read ``RESTATE_INGRESS_URL`` / ``RESTATE_ADMIN_URL``
(defaults in the blocks: a local server's http://localhost:8080 and :9070), the fixture starts
one (tests/restate_server.py, on free ports) and sets both variables.

The examples run in parallel (a few at a time: each is a process of its own), in one
module-scoped fixture; each example is then one test that reports its own output.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .restate_server import RestateServer

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_FILE_NAME = re.compile(r"^# ([\w/.-]+\.py)\b")
_CONFIG_NAME = re.compile(r"^# ([\w/.-]+\.(?:toml|ya?ml))\b")
#: commands a reader leaves running, and what each prints once it is ready (None: no wait)
_BACKGROUND = {"sagakit worker": None, "hypercorn": "Running on"}
_RESTATE_VARIABLES = ("RESTATE_INGRESS_URL", "RESTATE_ADMIN_URL")
_BIN = Path(sys.executable).parent
# each example is a process that starts sagakit (and sometimes a worker): a few at a time
_PARALLEL = 4
_TIMEOUT = 300.0


@dataclass
class Example:
    where: str
    files: list[tuple[str, str]] = field(default_factory=list)  # (name, code)
    # the steps, in the document's order: ("python", name) / ("bash", script) / ("pytest", name)
    steps: list[tuple[str, str]] = field(default_factory=list)

    @property
    def needs_restate(self) -> bool:
        return any(name in code for _, code in self.files for name in _RESTATE_VARIABLES)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _runs_itself(code: str) -> bool:
    return "asyncio.run(" in code or "__main__" in code


def _close(example: Example) -> Example:
    """Orders the steps of a several-file example: bash blocks only between its files, files
    a bash block runs by name are not run again, test files last."""
    names = [name for name, _ in example.files]
    last_file = max(i for i, (kind, _) in enumerate(example.steps) if kind == "file")
    bash = " ".join(s for k, s in example.steps[:last_file] if k == "bash")
    steps: list[tuple[str, str]] = []
    for index, (kind, value) in enumerate(example.steps):
        if kind == "bash" and index < last_file:
            steps.append(("bash", value))
        elif kind == "file":
            code = dict(example.files)[value]
            named_in_bash = re.search(rf"(^|[\s/]){re.escape(value)}\b", bash) is not None
            if Path(value).name.startswith("test_"):
                continue
            module = Path(value).with_suffix("").as_posix().replace("/", ".")
            imported = any(
                re.search(rf"^\s*(from|import)\s+{re.escape(module)}\b", other, re.MULTILINE)
                for other_name, other in example.files
                if other_name != value
            )
            if (_runs_itself(code) or not imported) and not named_in_bash:
                steps.append(("python", value))
    steps += [("pytest", n) for n in names if Path(n).name.startswith("test_")]
    example.steps = steps
    return example


def _examples_of(path: Path) -> Iterator[Example]:
    text = path.read_text()
    where = path.relative_to(ROOT)
    group: Example | None = None
    for match in _FENCE.finditer(text):
        language, code = match.group(1), match.group(2)
        if language == "bash" and group is not None:
            group.steps.append(("bash", code))
            continue
        config = _CONFIG_NAME.match(code)
        if config is not None and group is not None and config.group(1) not in dict(group.files):
            group.files.append((config.group(1), code))
            continue
        if language != "python":
            continue
        named = _FILE_NAME.match(code)
        if named is None:
            yield Example(
                f"{where}:{_line(text, match.start())}",
                [("example.py", code)],
                [("python", "example.py")],
            )
            continue
        name = named.group(1)
        if group is not None and name in dict(group.files):
            yield _close(group)
            group = None
        if group is None:
            group = Example(f"{where}:{_line(text, match.start())}")
        group.files.append((name, code))
        group.steps.append(("file", name))
    if group is not None:
        yield _close(group)


EXAMPLES = [example for document in DOCUMENTS for example in _examples_of(document)]


def _environment(folder: Path, restate: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(restate)
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"  # `sagakit`, `python`, `pytest`
    env["SAGAKIT_DB"] = "sqlite:///sagakit.db"
    env.pop("PYTHONPATH", None)
    env["PYTHONPATH"] = str(folder)  # sibling files import each other, as `python x.py` allows
    return env


def _commands(script: str) -> list[str]:
    """The commands of a bash block: comment lines dropped, continued lines joined."""
    commands: list[str] = []
    pending = ""
    for line in script.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending)
        pending = ""
    return commands + ([pending] if pending else [])


def _ready(process: subprocess.Popen[str], log: Path, marker: str, deadline: float) -> bool:
    while marker not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _run(example: Example, restate: dict[str, str]) -> tuple[bool, str]:
    """Runs one example in a folder of its own; returns (passed, what it printed).
    ``restate``: the Restate variables to set, if the example needs a server."""
    with tempfile.TemporaryDirectory(prefix="doc-example-") as name:
        folder = Path(name)
        for file_name, code in example.files:
            (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
            (folder / file_name).write_text(code)
        env = _environment(folder, restate if example.needs_restate else {})
        background: list[tuple[subprocess.Popen[str], signal.Signals, Path]] = []
        log: list[str] = []
        passed = False
        try:
            passed = _steps(example, folder, env, background, log)
        finally:
            for process, stop, output in background:
                os.killpg(process.pid, stop)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                if not passed:
                    log.append(f"(in the background, exit {process.returncode})")
                    log.append(output.read_text(errors="replace"))
        return passed, "\n".join(log)


def _steps(
    example: Example,
    folder: Path,
    env: dict[str, str],
    background: list[tuple[subprocess.Popen[str], signal.Signals, Path]],
    log: list[str],
) -> bool:
    """Runs the example's steps in order until one fails; whether all passed."""
    deadline = time.monotonic() + _TIMEOUT
    for kind, value in example.steps:
        if kind == "bash":
            for command in _commands(value):
                if command.startswith("export SAGAKIT_DB="):
                    continue
                prefix = next((p for p in _BACKGROUND if command.startswith(p)), None)
                if prefix is None:
                    if not _step(["bash", "-c", command], folder, env, deadline, log):
                        return False
                    continue
                output = folder / f".background-{len(background)}.log"
                with open(output, "w") as sink:
                    process = subprocess.Popen(
                        shlex.split(command, comments=True),
                        cwd=folder,
                        env=env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        text=True,
                        start_new_session=True,
                    )
                # the Restate SDK takes SIGTERM to drain: hypercorn stops on SIGINT, as
                # docs/restate.md tells the reader
                stop = signal.SIGINT if prefix == "hypercorn" else signal.SIGTERM
                background.append((process, stop, output))
                marker = _BACKGROUND[prefix]
                if marker is not None and not _ready(process, output, marker, deadline):
                    log.append(f"$ {command}\n(never said {marker!r})")
                    return False
        elif kind == "python":
            if not _step([sys.executable, value], folder, env, deadline, log):
                return False
        else:
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", value]
            if not _step(argv, folder, env, deadline, log):
                return False
    return True


def _step(
    argv: list[str], folder: Path, env: dict[str, str], deadline: float, log: list[str]
) -> bool:
    try:
        done = subprocess.run(
            argv,
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired as exc:
        log.append(f"$ {shlex.join(argv)}\n(timed out)\n{exc.stdout or ''}\n{exc.stderr or ''}")
        return False
    log.append(f"$ {shlex.join(argv)}  (exit {done.returncode})\n{done.stdout}\n{done.stderr}")
    return done.returncode == 0


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> dict[str, tuple[bool, str]]:
    """Runs every example this session selected, a few at a time."""
    selected = {
        item.callspec.params["example"].where
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.module is request.module
        and hasattr(item, "callspec")
        and "example" in item.callspec.params
    }
    chosen = [example for example in EXAMPLES if example.where in selected]
    with contextlib.ExitStack() as stack:
        restate: dict[str, str] = {}
        if any(example.needs_restate for example in chosen):
            server = stack.enter_context(RestateServer())
            restate = {"RESTATE_INGRESS_URL": server.ingress_url}
            restate["RESTATE_ADMIN_URL"] = server.admin_url
        with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
            results = list(pool.map(functools.partial(_run, restate=restate), chosen))
    return {example.where: result for example, result in zip(chosen, results, strict=True)}


def test_every_document_is_collected() -> None:
    assert (ROOT / "README.md") in DOCUMENTS
    assert len(EXAMPLES) >= 50, "the README and docs/ hold fewer examples than expected"
    # docs/restate.md's client and parked-step programs run against a real Restate server
    on_restate = [e for e in EXAMPLES if e.needs_restate]
    assert [e.where.split(":")[0] for e in on_restate] == ["docs/restate.md"]
    assert {"client.py", "operate.py"} <= {name for name, _ in on_restate[0].files}
    guides = sorted((ROOT / "docs" / "migrating").glob("*.md"))
    for guide in guides:
        if guide.name != "README.md":
            assert any(e.where.startswith(str(guide.relative_to(ROOT))) for e in EXAMPLES), guide


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_example_runs_as_written(example: Example, outcomes: dict[str, tuple[bool, str]]) -> None:
    passed, output = outcomes[example.where]
    assert passed, f"{example.where} failed:\n{output}"
