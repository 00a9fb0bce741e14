"""A saga's recorded history as a JSON document: what ``sagakit export`` prints and what
:func:`sagakit.testing.replay` reads.

The format is versioned (``"format": "sagakit-history/1"``) and documented in the README
("Changing code under live sagas"). JSON held as text in the database (the input, each entry's
output, compensation data and error, each event's payload) appears decoded, so that a history
reads and diffs well; a column that is NULL is left out of its object, which keeps "no value"
(key absent) apart from a recorded JSON ``null`` (key present, value null).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import serde
from .errors import SagaNotFoundError, SagaValidationError
from .stores.base import JournalEntry, SagaEvent, SagaRecord, Store

#: the ``format`` of the documents this module writes and reads
HISTORY_FORMAT = "sagakit-history/1"

#: saga row fields written as they are (besides ``id``, ``input``, ``output``, ``error``)
_SAGA_PLAIN = ("name", "status", "created_at", "updated_at", "object_key", "parent_id")
#: journal entry fields whose text is JSON
_ENTRY_JSON = ("output", "compensation", "error")


@dataclass(frozen=True, slots=True)
class History:
    """A saga row with its journal (audit entries at negative seqs included) and events."""

    record: SagaRecord
    journal: list[JournalEntry]
    events: list[SagaEvent]

    @property
    def version(self) -> str | None:
        """The version of the definition that started the saga, if the store records one."""
        version = getattr(self.record, "version", None)
        return None if version is None else str(version)


async def read_history(store: Store, saga_id: str) -> History:
    """Read one saga's row, journal and events (reads only). Raises SagaNotFoundError."""
    record = await store.load_saga(saga_id)
    if record is None:
        raise SagaNotFoundError(saga_id)
    journal = await store.load_journal(saga_id)
    events = await store.load_events(saga_id)
    return History(record, sorted(journal, key=lambda e: e.seq), events)


def history_to_json(history: History) -> dict[str, Any]:
    """The documented JSON form of a history."""
    record = history.record
    saga: dict[str, Any] = {"id": record.saga_id}
    for name in _SAGA_PLAIN:
        saga[name] = getattr(record, name)
    if history.version is not None:
        saga["version"] = history.version
    saga["input"] = serde.loads(record.input)
    _put_json(saga, "output", record.output)
    _put_json(saga, "error", record.error)
    journal = []
    for entry in history.journal:
        item: dict[str, Any] = {
            "seq": entry.seq,
            "kind": entry.kind,
            "name": entry.name,
            "status": entry.status,
            "attempts": entry.attempts,
        }
        for name in _ENTRY_JSON:
            _put_json(item, name, getattr(entry, name))
        item["started_at"] = entry.started_at
        item["finished_at"] = entry.finished_at
        journal.append(item)
    events = [
        {
            "seq": event.seq,
            "kind": event.kind,
            "name": event.name,
            "payload": serde.loads(event.payload),
            "created_at": event.created_at,
        }
        for event in history.events
    ]
    return {"format": HISTORY_FORMAT, "saga": saga, "journal": journal, "events": events}


def load_history(source: History | Mapping[str, Any] | str | Path) -> History:
    """A history from its JSON form: a dict, a path to a file, or the JSON text itself.

    Raises SagaValidationError for a document that is not a sagakit history (or of a format
    this version of sagakit does not read)."""
    if isinstance(source, History):
        return source
    data = _document(source)
    found = data.get("format")
    if found != HISTORY_FORMAT:
        raise SagaValidationError(
            f"not a sagakit history: its format is {found!r}, expected {HISTORY_FORMAT!r}; "
            "make one with `sagakit export SAGA_ID > history.json`"
        )
    try:
        return _parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise SagaValidationError(
            f"the history document is damaged ({type(exc).__name__}: {exc}); export it again "
            "with `sagakit export SAGA_ID > history.json`"
        ) from exc


def _document(source: Mapping[str, Any] | str | Path) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    text = str(source)
    if isinstance(source, str) and text.lstrip().startswith("{"):
        origin = "the history text"
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SagaValidationError(f"cannot read the history file {str(path)!r}: {exc}") from exc
        origin = f"the history file {str(path)!r}"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SagaValidationError(f"{origin} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SagaValidationError(f"{origin} is not a sagakit history (not a JSON object)")
    return data


def _parse(data: Mapping[str, Any]) -> History:
    saga = data["saga"]
    saga_id = str(saga["id"])
    fields: dict[str, Any] = {
        "saga_id": saga_id,
        "name": str(saga["name"]),
        "status": str(saga["status"]),
        "input": serde.dumps(saga["input"]),
        "output": _text(saga, "output"),
        "error": _text(saga, "error"),
        "owner": None,
        "fence": 0,
        "lease_expires_at": 0.0,
        "created_at": float(saga.get("created_at") or 0.0),
        "updated_at": float(saga.get("updated_at") or 0.0),
        "object_key": saga.get("object_key"),
        "parent_id": saga.get("parent_id"),
        "version": saga.get("version"),
    }
    # a field this sagakit's SagaRecord does not have (``version`` before versions) is dropped
    known = {f.name for f in dataclasses.fields(SagaRecord)}
    record = SagaRecord(**{k: v for k, v in fields.items() if k in known})
    journal = [
        JournalEntry(
            saga_id,
            int(item["seq"]),
            str(item["kind"]),
            str(item["name"]),
            str(item["status"]),
            int(item.get("attempts", 1)),
            _text(item, "output"),
            _text(item, "compensation"),
            _text(item, "error"),
            float(item.get("started_at") or 0.0),
            float(item.get("finished_at") or 0.0),
        )
        for item in data.get("journal", [])
    ]
    events = [
        SagaEvent(
            saga_id,
            int(item["seq"]),
            str(item["kind"]),
            str(item["name"]),
            serde.dumps(item.get("payload")),
            float(item.get("created_at") or 0.0),
        )
        for item in data.get("events", [])
    ]
    journal.sort(key=lambda e: e.seq)
    events.sort(key=lambda e: e.seq)
    return History(record, journal, events)


def _put_json(target: dict[str, Any], key: str, text: str | None) -> None:
    if text is not None:
        target[key] = serde.loads(text)


def _text(item: Mapping[str, Any], key: str) -> str | None:
    return serde.dumps(item[key]) if key in item else None


__all__ = ["HISTORY_FORMAT", "History", "history_to_json", "load_history", "read_history"]
