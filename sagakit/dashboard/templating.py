"""The dashboard's Jinja2 environment: the templates of ``sagakit/dashboard/templates/``,
autoescaped (a saga's input may well contain HTML), and the filters they share.

Every value from the database reaches the page through a template, so through the escaping;
the only markup passed in as :class:`~markupsafe.Markup` is the timeline chart, which
:mod:`.chart` escapes itself.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..timeline import format_duration, format_time

__all__ = ["MAX_JSON", "environment", "json_text", "render", "saga_path"]

#: the most characters of one JSON value a page shows (inputs can be large)
MAX_JSON = 20_000


def saga_path(saga_id: str) -> str:
    """The saga page's path (under the dashboard's root); ids may hold any character, ``/``
    included."""
    return "/sagas/" + quote(saga_id, safe="")


def json_text(value: Any, *, indent: int | None = 2, limit: int = MAX_JSON) -> str:
    """``value`` as pretty JSON, cut at ``limit`` characters with a note of what was left."""
    text = json.dumps(value, indent=indent, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit:,} more characters not shown)"
    return text


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


@cache
def environment() -> Environment:
    """The shared environment (templates are compiled once per process)."""
    env = Environment(
        loader=PackageLoader("sagakit.dashboard", "templates"),
        autoescape=select_autoescape(("html", "svg", "css"), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        saga_path=saga_path,
        json_text=json_text,
        compact=_compact,
        iso=_iso,
        when=lambda value, millis=False: format_time(value, millis=millis),
        duration=format_duration,
        thousands=lambda n: f"{n:,}",
    )
    return env


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context``."""
    return environment().get_template(template).render(**context)
