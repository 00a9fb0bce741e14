"""The operator's search, as stores see it: a value at a path of a saga's input or output
(:class:`FieldMatch`), and the saga id prefix's range.

A value is compared as a JSON scalar, given as text: ``42`` matches the number 42 (and 42.0)
and the string ``"42"``; ``true``/``false`` match the booleans and those strings; ``null``
matches a JSON null (not a missing key) and the string ``"null"``; anything else matches only
that string. Objects and arrays never match. The text is what an operator types on a command
line or in a URL, where the two are hard to tell apart, hence both.

A path is a list of object keys, each an identifier (letters, digits, ``_``, not starting with
a digit): the stores pass it to the database as a parameter, never inside the SQL text.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import SagaValidationError

#: the saga columns a search may look inside
SOURCES = ("input", "output")
#: how deep a path may go (a typo in a generated path should not build a huge query)
MAX_DEPTH = 16
#: how many value conditions one search may have
MAX_MATCHES = 8

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_LITERALS = ("true", "false", "null")


class SearchError(SagaValidationError):
    """A search condition that cannot be used (a bad path, an unknown field, no ``=``); the
    message says what was wrong and what is accepted."""


@dataclass(frozen=True, slots=True)
class FieldMatch:
    """The JSON scalar at ``path`` inside the saga's ``source`` (``"input"`` or ``"output"``)
    equals ``value`` (see the module docstring for how text and JSON values compare).

    Raises SearchError when ``source`` or ``path`` is not one a search accepts.
    """

    source: str
    path: tuple[str, ...]
    value: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise SearchError(
                f"a search looks inside a saga's input or output, not {self.source!r}: "
                "write input.<key> or output.<key>"
            )
        if not self.path:
            raise SearchError(
                f"{self.source} needs a key to compare: write {self.source}.<key>=<value>"
            )
        if len(self.path) > MAX_DEPTH:
            raise SearchError(f"a search path has at most {MAX_DEPTH} keys, got {len(self.path)}")
        for segment in self.path:
            if not isinstance(segment, str) or not _SEGMENT.match(segment):
                raise SearchError(
                    f"{segment!r} in {self.label} is not a key a search accepts: keys are "
                    "letters, digits and _, not starting with a digit (input.customer.id)"
                )
        if not isinstance(self.value, str):
            raise SearchError(f"the value of {self.label} must be text, got {self.value!r}")

    @property
    def label(self) -> str:
        """``input.customer.id``: the field as an operator writes it."""
        return ".".join((self.source, *self.path))

    @property
    def json_path(self) -> str:
        """The path in SQLite's JSON path syntax (``$.customer.id``)."""
        return "$." + ".".join(self.path)

    @property
    def number(self) -> int | float | None:
        """The value as a JSON number, if it is written as one."""
        if not _NUMBER.match(self.value):
            return None
        if re.fullmatch(r"-?[0-9]+", self.value):
            return int(self.value)
        found = float(self.value)
        return found if math.isfinite(found) else None

    @property
    def literal(self) -> str | None:
        """``true``, ``false`` or ``null`` when the value is that JSON literal."""
        return self.value if self.value in _LITERALS else None

    def candidates(self) -> list[str]:
        """The JSON texts the value matches: the string, and the number or literal it spells."""
        found = [json.dumps(self.value)]
        if self.number is not None or self.literal is not None:
            found.append(self.value)
        return found

    def matches(self, document: str | None) -> bool:
        """Whether a saga whose ``source`` column holds ``document`` (JSON text) matches; what
        the memory store does, and what the SQL stores' queries do."""
        if document is None:
            return False
        try:
            found: Any = json.loads(document)
        except ValueError:
            return False
        for segment in self.path:
            if not isinstance(found, dict) or segment not in found:
                return False
            found = found[segment]
        if isinstance(found, str):
            return found == self.value
        if found is None or isinstance(found, bool):
            return self.literal == json.dumps(found)
        if isinstance(found, int | float):
            number = self.number
            return number is not None and found == number
        return False


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code point
    order, which is also UTF-8 byte order), or None when there is none: the end of the id
    range ``[prefix, bound)`` a primary key index can read."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            following = last + 1
            if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be stored; skip them
                following = 0xE000
            return "".join(chars) + chr(following)
    return None


def check_id_prefix(prefix: str) -> str:
    """``prefix`` if it can start a saga id; raises SearchError otherwise."""
    if not isinstance(prefix, str) or not prefix:
        raise SearchError(f"an id prefix is a non-empty string, got {prefix!r}")
    if "\x00" in prefix or any(0xD800 <= ord(c) <= 0xDFFF for c in prefix):
        raise SearchError(f"an id prefix cannot hold NUL or lone surrogates, got {prefix!r}")
    return prefix
