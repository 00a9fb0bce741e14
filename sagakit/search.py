"""The operator's search: which sagas to list, by id prefix, workflow, status, time and a
value inside their input or output. ``sagakit list``, ``engine.admin.list_sagas`` and the
dashboard's list page share it.

A condition on a value is written ``input.<key>[.<key>...]=<value>`` or
``output.<key>...=<value>`` (``input.customer_id=42``, ``input.customer.id=7``,
``output.status=shipped``). The value is compared as a JSON scalar given as text: ``42``
matches the number 42 (42.0 too) and the string ``"42"``; ``true``, ``false`` and ``null``
match that JSON value and that string; any other text matches only that string. Keys are
identifiers (letters, digits, ``_``, not starting with a digit), and every part of a condition
reaches the database as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

from .stores.searching import MAX_MATCHES, FieldMatch, SearchError, check_id_prefix

__all__ = ["FieldMatch", "SearchError", "check_id_prefix", "parse_where", "parse_wheres"]


def parse_where(text: str) -> FieldMatch:
    """``input.customer_id=42`` as a :class:`FieldMatch`.

    Raises SearchError (a :class:`~sagakit.SagaValidationError`) saying what is wrong: no
    ``=``, a field other than input or output, a key that is not an identifier.
    """
    if not isinstance(text, str):
        raise SearchError(f"a search condition is text such as input.customer_id=42, got {text!r}")
    field, equals, value = text.partition("=")
    if not equals:
        raise SearchError(
            f"{text!r} is not a search condition: write <field>=<value>, for example "
            "input.customer_id=42 or output.status=shipped"
        )
    source, _, path = field.strip().partition(".")
    return FieldMatch(source, tuple(path.split(".")) if path else (), value)


def parse_wheres(items: Iterable[str | FieldMatch]) -> tuple[FieldMatch, ...]:
    """Several conditions (all must hold); strings are parsed with :func:`parse_where`."""
    found = tuple(item if isinstance(item, FieldMatch) else parse_where(item) for item in items)
    if len(found) > MAX_MATCHES:
        raise SearchError(f"a search takes at most {MAX_MATCHES} conditions, got {len(found)}")
    return found
