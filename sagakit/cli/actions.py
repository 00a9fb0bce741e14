"""The commands that steer sagas: ``retry``, ``skip``, ``compensate``, ``cancel``,
``resume`` and ``delete``.

Each takes saga ids, or a selection (``--status``/``--name``/``--created-…``) that it acts on
only with ``--yes``, and goes through ``engine.admin``: the admin API checks each action
against the saga's status and leaves an audit entry; the workers then carry the saga on. Over
several sagas a progress bar runs on stderr, one line per saga says what was done, and a
refused action is one line on stderr that does not stop the others (the exit code is 1 at the
end). ``--wait`` then follows the sagas until they settle (see :mod:`.follow`).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click

from ..admin import SagaAdmin
from ..engine import SagaSnapshot
from ..errors import SagaError, SagaNotFoundError
from ..stores.base import SagaStatus
from .common import (
    check_readable,
    db_option,
    db_url,
    filter_options,
    iso_utc,
    open_admin,
    operator_name,
    run,
    safe_url,
)
from .follow import follow

#: how many sagas one read of a selection fetches
_SELECTION_PAGE = 500
#: how many ids the refusal of an unconfirmed selection names
_SHOWN_IDS = 3

#: calls one admin action on one saga, with the operator's reason and name
Call = Callable[[SagaAdmin, str, str | None, str | None], Awaitable[SagaSnapshot]]


@dataclass(frozen=True, slots=True)
class Action:
    """One operator action as the command line presents it."""

    #: the command's name, also the verb of messages ("cannot retry ...")
    verb: str
    #: what a line of output says was done ("retried order-7")
    done: str
    #: the statuses a selection picks when --status is not given: those the action applies to
    statuses: tuple[SagaStatus, ...]
    #: whether the saga is still there afterwards (to report its status, and to follow it)
    keeps_saga: bool = True


@dataclass(frozen=True, slots=True)
class Request:
    """What the operator asked for: the sagas (ids or a selection) and how to act."""

    url: str
    saga_ids: tuple[str, ...]
    status: str | None
    name: str | None
    created_after: datetime | None
    created_before: datetime | None
    confirmed: bool
    reason: str | None
    by: str | None
    wait: bool
    timeout: float | None

    @property
    def is_selection(self) -> bool:
        return any(
            v is not None for v in (self.status, self.name, self.created_after, self.created_before)
        )

    def describe_selection(self) -> str:
        parts = [
            f"{option} {value}"
            for option, value in (
                ("--status", self.status),
                ("--name", self.name),
                ("--created-after", self.created_after and iso_utc(self.created_after)),
                ("--created-before", self.created_before and iso_utc(self.created_before)),
            )
            if value
        ]
        return " ".join(parts)


def action_command(
    action: Action, *, reason_required: bool = False
) -> Callable[[Callable[..., None]], click.Command]:
    """Make a click command of an action: the targets, ``--reason``, ``--by``, ``--yes``,
    ``--wait`` and ``--db`` options, gathered into a :class:`Request` that the decorated
    function gets first (its own options follow as keywords)."""

    def decorate(fn: Callable[..., None]) -> click.Command:
        @functools.wraps(fn)
        def command(
            saga_ids: tuple[str, ...],
            db: str,
            status: str | None,
            name: str | None,
            created_after: datetime | None,
            created_before: datetime | None,
            yes: bool,
            reason: str | None,
            by: str | None,
            wait: bool,
            timeout: float | None,
            **own: Any,
        ) -> None:
            request = Request(
                url=db_url(db),
                saga_ids=saga_ids,
                status=status,
                name=name,
                created_after=created_after,
                created_before=created_before,
                confirmed=yes,
                reason=reason,
                by=by if by is not None else operator_name(),
                wait=wait,
                timeout=timeout,
            )
            if request.saga_ids and request.is_selection:
                raise click.UsageError(
                    "give saga ids or a selection (--status, --name, --created-…), not both"
                )
            if not request.saga_ids and not request.is_selection:
                raise click.UsageError(
                    f"name the sagas to {action.verb}: SAGA_ID..., or a selection "
                    "(--status, --name, --created-after, --created-before) with --yes"
                )
            fn(request, **own)

        options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
            click.argument("saga_ids", nargs=-1, metavar="[SAGA_ID]..."),
            db_option,
            filter_options,
            click.option(
                "--yes",
                "-y",
                is_flag=True,
                help=f"Really {action.verb} every saga the selection matches (without it, a "
                "selection is only counted, and nothing is done).",
            ),
            click.option(
                "--reason",
                required=reason_required,
                metavar="TEXT",
                help="Why: kept in the saga's audit trail."
                + (" Required." if reason_required else ""),
            ),
            click.option(
                "--by",
                metavar="NAME",
                help="Who acts, for the audit trail.  [default: your OS user name]",
            ),
            click.option(
                "--wait",
                is_flag=True,
                help="Then follow the sagas, with a live status line, until they end, suspend "
                "or park again.",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0),
                metavar="SECONDS",
                help="With --wait: stop following after this long (the sagas go on).",
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return click.command(action.verb)(command)

    return decorate


async def _select(admin: SagaAdmin, request: Request, action: Action) -> list[str]:
    """The ids of the sagas the selection matches now, newest first."""
    statuses = [request.status] if request.status else [s.value for s in action.statuses]
    found: list[str] = []
    for status in statuses:
        cursor: str | None = None
        while True:
            page = await admin.list_sagas(
                status=status,
                name=request.name,
                created_after=request.created_after,
                created_before=request.created_before,
                limit=_SELECTION_PAGE,
                cursor=cursor,
            )
            found.extend(s.saga_id for s in page.sagas)
            cursor = page.next_cursor
            if cursor is None:
                break
    # a saga that changed status between two of the reads is listed twice: act on it once
    return list(dict.fromkeys(found))


def _refuse_unconfirmed(request: Request, action: Action, ids: list[str]) -> None:
    shown = ", ".join(ids[:_SHOWN_IDS]) + (", …" if len(ids) > _SHOWN_IDS else "")
    plural = "saga" if len(ids) == 1 else "sagas"
    raise click.ClickException(
        f"{request.describe_selection()} selects {len(ids)} {plural} ({shown}); nothing was "
        f"done: add --yes to {action.verb} {'it' if len(ids) == 1 else 'them all'}"
    )


def _what_was_done(action: Action, snapshot: SagaSnapshot) -> str:
    if not action.keeps_saga:
        return f"{action.done} {snapshot.saga_id} (it was {snapshot.status})"
    latest = snapshot.audit[-1] if snapshot.audit else None
    step = ""
    if latest is not None and latest.step:
        step = f" (step {latest.step!r}" + (
            f", seq {latest.seq})" if latest.seq is not None else ")"
        )
    return f"{action.done} {snapshot.saga_id}{step}: now {snapshot.status}{_children(snapshot)}"


def _children(snapshot: SagaSnapshot) -> str:
    """What a cancel did to the saga's child sagas (and theirs), from its audit entry."""
    latest = snapshot.audit[-1] if snapshot.audit else None
    if latest is None or latest.action != "roll_back_children":
        return ""
    said = []
    rolled = latest.details.get("rolled_back") or []
    if rolled:
        plural = "child saga" if len(rolled) == 1 else "child sagas"
        said.append(f"rolling back {len(rolled)} {plural}: {', '.join(rolled)}")
    rolling = latest.details.get("rolling_back") or []
    if rolling:
        said.append(f"already rolling back: {', '.join(rolling)}")
    ended = latest.details.get("ended") or {}
    if ended:
        said.append("ended first, left as is: " + ", ".join(f"{k} ({v})" for k, v in ended.items()))
    moving = latest.details.get("moving") or []
    if moving:
        said.append(f"rolls back when it next runs: {', '.join(moving)}")
    return "".join(f"; {part}" for part in said)


def _error_line(request: Request, saga_id: str, exc: SagaError) -> str:
    if isinstance(exc, SagaNotFoundError):
        return f"no saga with id {saga_id!r} in {safe_url(request.url)}"
    message = str(exc)
    return message if repr(saga_id) in message else f"saga {saga_id!r}: {message}"


async def _act(
    admin: SagaAdmin, request: Request, action: Action, call: Call, ids: list[str]
) -> tuple[list[SagaSnapshot], int]:
    """Act on each saga in turn; the sagas as the actions left them, and how many were
    refused."""
    done: list[SagaSnapshot] = []
    refused = 0
    live = len(ids) > 1 and sys.stderr.isatty()
    with click.progressbar(
        length=len(ids),
        label=f"{action.verb}: {len(ids)} sagas",
        file=sys.stderr,
        hidden=len(ids) < 2,
    ) as bar:
        for saga_id in ids:
            try:
                snapshot = await call(admin, saga_id, request.reason, request.by)
            except SagaError as exc:
                refused += 1
                line, err = f"Error: {_error_line(request, saga_id, exc)}", True
            else:
                done.append(snapshot)
                line, err = _what_was_done(action, snapshot), False
            if live:
                click.echo("\r\x1b[K", nl=False, err=True)  # the bar's line, so ours reads clean
            click.echo(line, err=err)
            bar.update(1)
    return done, refused


def perform(request: Request, action: Action, call: Call) -> None:
    """Carry out ``action`` on what ``request`` names, report, and exit 1 if any saga was
    refused (or, with ``--wait``, did not settle well)."""
    check_readable(request.url)

    async def main() -> bool:
        async with open_admin(request.url) as admin:
            ids = list(dict.fromkeys(request.saga_ids))  # a repeated id is acted on once
            if request.is_selection:
                ids = await _select(admin, request, action)
                if not ids:
                    click.echo(f"no sagas to {action.verb}: {request.describe_selection()}")
                    return True
                if not request.confirmed:
                    _refuse_unconfirmed(request, action, ids)
            done, refused = await _act(admin, request, action, call, ids)
            if refused and len(ids) > 1:
                click.echo(
                    f"Error: {refused} of {len(ids)} sagas refused to {action.verb} (see "
                    f"above); {len(done)} done",
                    err=True,
                )
            settled_well = True
            if request.wait and done and action.keeps_saga:
                settled_well = await follow(admin, done, timeout=request.timeout)
            return not refused and settled_well

    try:
        ok = run(main())
    except KeyboardInterrupt:
        click.echo(
            "\nstopped (Ctrl-C): what is printed above was done; the sagas go on in the workers",
            err=True,
        )
        sys.exit(130)
    if not ok:
        sys.exit(1)


# a selection without --status leaves out the ended sagas these also apply to (retry and skip
# COMPENSATED, compensate COMPLETED): taking an ended saga up again is asked for by --status
RETRY = Action("retry", "retried", (SagaStatus.PARKED, SagaStatus.FAILED))
SKIP = Action("skip", "skipped", (SagaStatus.PARKED, SagaStatus.FAILED))
COMPENSATE = Action(
    "compensate",
    "rolling back",
    (SagaStatus.QUEUED, SagaStatus.PENDING, SagaStatus.SUSPENDED, SagaStatus.PARKED),
)
CANCEL = Action(
    "cancel",
    "cancelled",
    (
        SagaStatus.QUEUED,
        SagaStatus.PENDING,
        SagaStatus.RUNNING,
        SagaStatus.SUSPENDED,
        SagaStatus.PARKED,
        SagaStatus.COMPENSATING,
    ),
)
RESUME = Action("resume", "resumed", (SagaStatus.SUSPENDED,))
DELETE = Action(
    "delete",
    "deleted",
    (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED),
    keeps_saga=False,
)


_FORWARD = click.option(
    "--forward",
    is_flag=True,
    help="On a saga FAILED in its rollback: abandon the rollback and go forward again from "
    "the failed step, as on a COMPENSATED saga (what was undone runs again).",
)


@action_command(RETRY)
@_FORWARD
def retry_command(request: Request, forward: bool) -> None:
    """Run a PARKED saga's step again (with a fresh retry budget), or a FAILED saga's failed
    compensations, or replay a saga that failed on non-determinism with today's code; a
    COMPENSATED saga goes forward again from its failed step (the steps its rollback undid
    run again)."""

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        return await admin.retry_step(saga_id, forward=forward, reason=reason, by=by)

    perform(request, RETRY, call)


@action_command(SKIP)
@click.option(
    "--output",
    "output_json",
    metavar="JSON",
    help="The output to record for the skipped step, as JSON (e.g. '{\"paid\": true}'); "
    "checked before anything is written. Leave it out on a FAILED saga (without --forward).",
)
@_FORWARD
def skip_command(request: Request, output_json: str | None, forward: bool) -> None:
    """Record an output for the step a PARKED saga stopped at and go on without running it
    (on a COMPENSATED saga: for its failed step, and it goes forward again); or on a FAILED
    saga, count its failed compensations as done (undone by hand) and finish the rollback."""
    mock_output: Any = None
    if output_json is not None:
        try:
            mock_output = json.loads(output_json)
        except ValueError as exc:
            raise click.BadParameter(
                f"not JSON ({exc}); quote it for the shell, e.g. --output '{{\"paid\": true}}'",
                param_hint="'--output'",
            ) from exc

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        return await admin.skip_step(saga_id, mock_output, forward=forward, reason=reason, by=by)

    perform(request, SKIP, call)


@action_command(COMPENSATE)
def compensate_command(request: Request) -> None:
    """Roll a QUEUED, PENDING, SUSPENDED, PARKED or COMPLETED saga back now: it stops going
    forward (a COMPLETED one gives up its output; a QUEUED one never starts) and the
    compensations of what it did run, newest first."""

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        return await admin.compensate(saga_id, reason=reason, by=by)

    perform(request, COMPENSATE, call)


@action_command(CANCEL, reason_required=True)
def cancel_command(request: Request) -> None:
    """Stop a saga that has not ended, for good, without rolling it back (it becomes
    CANCELLED; a QUEUED one never starts); its child sagas that have not ended are rolled
    back. --reason is required."""

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        assert reason is not None  # click requires --reason for cancel
        return await admin.cancel(saga_id, reason, by=by)

    perform(request, CANCEL, call)


@action_command(RESUME)
def resume_command(request: Request) -> None:
    """Wake a SUSPENDED saga now: its timers end early; a wait for a signal, promise or child
    looks at its events again (and goes on waiting if none answered it)."""

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        return await admin.resume(saga_id, reason=reason, by=by)

    perform(request, RESUME, call)


@action_command(DELETE)
def delete_command(request: Request) -> None:
    """Remove an ended saga from the database: its row, journal, events and published state
    (the deletion is logged with --reason and --by). A selection without --status picks the
    COMPLETED, COMPENSATED and CANCELLED sagas; FAILED ones are deleted only by id or with
    --status FAILED."""

    async def call(
        admin: SagaAdmin, saga_id: str, reason: str | None, by: str | None
    ) -> SagaSnapshot:
        return await admin.delete(saga_id, reason=reason, by=by)

    if request.wait:
        raise click.UsageError("delete removes the sagas: there is nothing to --wait for")
    perform(request, DELETE, call)


ACTION_COMMANDS = (
    retry_command,
    skip_command,
    compensate_command,
    cancel_command,
    resume_command,
    delete_command,
)
