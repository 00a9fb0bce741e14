"""The ``sagakit`` command: a click group, one module per kind of command.

* :mod:`.read`: ``list``, ``show``, ``stats`` (look without touching);
* :mod:`.actions`: ``retry``, ``skip``, ``compensate``, ``cancel``, ``resume`` (steer sagas
  through ``engine.admin``), with :mod:`.follow` for their ``--wait``;
* :mod:`.processes`: ``demo``, ``worker``, ``dashboard`` (run until told to stop);
* :mod:`.migrate`: ``migrate`` (upgrade the schema, deliberately);
* :mod:`.check`: ``check`` (exit non-zero when sagas need an operator: alerts);
* :mod:`.queues`: ``queues``, ``queue set``, ``queue reset`` (look at queues, change limits);
* :mod:`.common`: ``--db`` and the other shared options and helpers.

Errors that sagakit raises on purpose (:class:`~sagakit.SagaError`) become one line on stderr and
exit code 1; a traceback means a bug.
"""

from __future__ import annotations

import io
import logging
import sys

import click

from .. import __version__
from .actions import ACTION_COMMANDS
from .check import check_command
from .common import DEFAULT_DB, db_url
from .fork import fork_command
from .migrate import migrate_command
from .processes import dashboard_command, demo, worker_command
from .prune import prune_command
from .queues import QUEUE_COMMANDS
from .read import list_command, show_command, stats_command
from .replay import REPLAY_COMMANDS
from .schedules import SCHEDULE_COMMANDS

__all__ = ["DEFAULT_DB", "db_url", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sagakit")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does (INFO level).")
def main(verbose: bool) -> None:
    """sagakit: durable sagas (steps with compensations) that survive crashes.

    Look at sagas with list, show and stats; steer them with retry, skip, compensate, cancel
    and resume; run them with worker; watch them in a browser with dashboard.
    """
    # an unprintable character must not crash a command halfway through its output
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="sagakit: %(levelname)s %(name)s: %(message)s",
    )


for _command in (
    demo,
    list_command,
    show_command,
    stats_command,
    check_command,
    *ACTION_COMMANDS,
    fork_command,
    prune_command,
    *QUEUE_COMMANDS,
    migrate_command,
    worker_command,
    dashboard_command,
    *REPLAY_COMMANDS,
    *SCHEDULE_COMMANDS,
):
    main.add_command(_command)
