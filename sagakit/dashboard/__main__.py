"""``python -m sagakit.dashboard --db URL [--host H] [--port P] [--token T] [--read-token R]``:
the dashboard without the ``sagakit`` command (``sagakit dashboard`` takes the same options)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import SagaError
from .server import serve_dashboard


def _db_url(value: str) -> str:
    # the same reading of --db as the `sagakit` command: a bare path is a SQLite file
    if "://" in value or value.startswith("sqlite:"):
        return value
    return "sqlite:///" + os.path.expanduser(value)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve until Ctrl-C or SIGTERM; 1 on an error."""
    parser = argparse.ArgumentParser(
        prog="python -m sagakit.dashboard", description="Serve the sagakit web dashboard."
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("SAGAKIT_DB", "sqlite:///sagakit.db"),
        help="store URL or SQLite file (default: $SAGAKIT_DB, then sqlite:///sagakit.db)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8700, help="TCP port (0: any free one)")
    parser.add_argument(
        "--token",
        default=os.environ.get("SAGAKIT_DASHBOARD_TOKEN"),
        help="secret that admin actions need (default: $SAGAKIT_DASHBOARD_TOKEN); "
        "without one the dashboard is read-only",
    )
    parser.add_argument(
        "--read-token",
        default=os.environ.get("SAGAKIT_DASHBOARD_READ_TOKEN"),
        help="secret that reading needs (default: $SAGAKIT_DASHBOARD_READ_TOKEN); required "
        "when --host is not a loopback address",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        serve_dashboard(
            _db_url(args.db),
            host=args.host,
            port=args.port,
            token=args.token,
            read_token=args.read_token,
        )
    except SagaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
