"""One URL-redaction helper (issue 19): every place that prints a database URL hides its
password, and keeps the rest (IPv6 brackets, port, query) as written."""

from __future__ import annotations

import socket

import pytest

from sagakit.cli.common import safe_url
from sagakit.errors import StoreError
from sagakit.stores import open_store
from sagakit.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # a password goes, everything else stays
        ("postgresql://ops:s3cret@db:5432/sagas", "postgresql://ops:***@db:5432/sagas"),
        ("postgres://ops:s3cret@db/sagas", "postgres://ops:***@db/sagas"),
        # IPv6: brackets and port kept
        ("postgresql://ops:s3cret@[::1]:5432/sagas", "postgresql://ops:***@[::1]:5432/sagas"),
        (
            "postgresql://ops:s3cret@[2001:db8::7]/sagas?sslmode=require",
            "postgresql://ops:***@[2001:db8::7]/sagas?sslmode=require",
        ),
        ("postgresql://ops@[::1]:5432/sagas", "postgresql://ops@[::1]:5432/sagas"),
        # no password, or a user only: unchanged
        ("postgresql://db.internal/sagas", "postgresql://db.internal/sagas"),
        ("postgresql://ops@db/sagas", "postgresql://ops@db/sagas"),
        # an empty user with a password, an empty password
        ("postgresql://:s3cret@db/sagas", "postgresql://:***@db/sagas"),
        ("postgresql://ops:@db/sagas", "postgresql://ops:***@db/sagas"),
        # a password holding @ or : (the host is after the last @)
        ("postgresql://ops:p@ss:w@db:6432/sagas", "postgresql://ops:***@db:6432/sagas"),
        # query strings: kept, except a password given there
        (
            "postgresql://ops@db/sagas?schema=orders&application_name=x",
            "postgresql://ops@db/sagas?schema=orders&application_name=x",
        ),
        (
            "postgresql://ops@db/sagas?sslmode=require&password=s3cret&schema=a",
            "postgresql://ops@db/sagas?sslmode=require&password=***&schema=a",
        ),
        (
            "postgresql://db/sagas?PASSWORD=s3cret#frag",
            "postgresql://db/sagas?PASSWORD=***#frag",
        ),
        ("postgresql://db/sagas?sslpassword=k3y", "postgresql://db/sagas?sslpassword=***"),
        # SQLite paths and memory URLs: unchanged, even with : or @ in the path
        ("sqlite:///sagakit.db", "sqlite:///sagakit.db"),
        ("sqlite:////var/lib/app/sagas.db", "sqlite:////var/lib/app/sagas.db"),
        ("sqlite:///data/a:b@c.db", "sqlite:///data/a:b@c.db"),
        ("sqlite:///data/x.db?mode=ro", "sqlite:///data/x.db?mode=ro"),
        ("memory://", "memory://"),
        # not a URL at all, or one urlsplit refuses (an unclosed bracket)
        ("./sagas.db", "./sagas.db"),
        ("postgresql://ops:s3cret@[::1/sagas", "postgresql://ops:***@[::1/sagas"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert safe_url(url) == shown  # the commands' name for it is the same helper
    assert redact_url(shown) == shown  # idempotent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_stores_errors_hide_the_password() -> None:
    port = _closed_port()
    store = open_store(f"postgresql://ops:s3cret@127.0.0.1:{port}/sagas")
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)
    assert f"postgresql://ops:***@127.0.0.1:{port}/sagas" in str(caught.value)

    with pytest.raises(StoreError) as caught:
        open_store("postgress://ops:s3cret@[::1]:5432/sagas")
    assert "postgress://ops:***@[::1]:5432/sagas" in str(caught.value)
    with pytest.raises(StoreError) as caught:
        open_store("sqlite:///x.db?password=s3cret", schema="x")
    assert "s3cret" not in str(caught.value)


def test_one_helper_no_copies() -> None:
    """The PostgreSQL store and the commands print URLs through sagakit.urls."""
    from pathlib import Path

    import sagakit

    root = Path(sagakit.__file__).parent
    copies = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "urls.py"
        and any(
            marker in path.read_text(encoding="utf-8")
            for marker in ("def _redact(", "def redact_url(", ":***@")
        )
    ]
    assert copies == []
