#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs the whole suite:
# lint, type check, and pytest (which starts its own throwaway PostgreSQL where a test needs one).
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL server binaries from Debian's package (initdb/pg_ctl), for the tests that need a server.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing PostgreSQL from Debian's packages..."
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi

# Chromium from Debian's package, for the dashboard's browser test (Playwright drives it;
# `playwright install` would download a browser, which the test never does).
if [ ! -x /usr/bin/chromium ]; then
    echo "installing Chromium from Debian's packages..."
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# RabbitMQ and NATS (with JetStream) from Debian's packages, for the transport tests
# (tests/brokers.py runs each from a temporary folder on loopback; the packages start nothing
# where policy-rc.d denies it, and nats-server ships only a systemd unit).
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || [ ! -x /usr/sbin/nats-server ]; then
    echo "installing RabbitMQ and NATS from Debian's packages..."
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server nats-server >/dev/null
fi

# The Restate server from npm (pinned; its binary ships inside the platform package, so no
# install script is needed: --ignore-scripts also skips a telemetry postinstall), for the tests
# of sagakit.restate. Kept in .cache/restate/ (gitignored); RESTATE_SERVER_BIN overrides it.
RESTATE_VERSION=1.7.12
RESTATE_BIN=.cache/restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server
if [ -z "${RESTATE_SERVER_BIN:-}" ] && [ ! -x "$RESTATE_BIN" ]; then
    echo "installing restate-server $RESTATE_VERSION from npm..."
    mkdir -p .cache/restate
    npm install --prefix .cache/restate --no-save --ignore-scripts --no-audit --no-fund \
        "@restatedev/restate-server@$RESTATE_VERSION" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check sagakit tests benchmarks examples
.venv/bin/ruff format --check sagakit tests benchmarks examples
echo "== mypy (strict)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest "$@"
