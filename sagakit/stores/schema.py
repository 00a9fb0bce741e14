"""What a store does with the schema it finds on open: create it, upgrade it, or refuse.

Upgrades are deliberate: a newer CLI or dashboard pointed at production must not upgrade the
schema under older workers (they would refuse to start). The policy, shared by the SQLite and
PostgreSQL stores (``migrate`` is ``Engine(migrate=...)``):

* ``read_only``: never write; the schema must be there and current.
* ``migrate=False``: never write the schema; refuse an empty or older one.
* ``migrate=None`` (the default): create the schema in an empty database (the first run stays
  one command); upgrade an older one only on an embedded SQLite file, which belongs to one
  application; refuse an older PostgreSQL schema, naming ``sagakit migrate``.
* ``migrate=True``: create or upgrade.

Rolling upgrades: the code of one release runs on the schema of the next, so that workers are
upgraded one at a time while others run. A schema exactly one version newer than this sagakit
knows is accepted as it is (never written); two or more versions newer is refused. That holds
because every migration only expands the schema (new tables, new columns with defaults, new
indexes); what a release stops using is dropped no earlier than the release after it.
"""

from __future__ import annotations

from importlib import resources

from ..errors import StoreError

#: the first line that makes a PostgreSQL migration script run outside a transaction (for
#: ``CREATE INDEX CONCURRENTLY``): its statements run one by one, each idempotent (``IF NOT
#: EXISTS``), so that a run interrupted halfway is simply run again
NO_TRANSACTION = "-- sagakit: no-transaction"


def migration_names(package: str) -> dict[int, str]:
    """The file name of each numbered migration script in ``package``, by number."""
    return {
        int(item.name[:4]): item.name
        for item in resources.files(package).iterdir()
        if item.name.endswith(".sql") and item.name[:4].isdigit()
    }


def split_statements(script: str) -> list[str]:
    """Split a migration script on ``;`` line ends (our scripts hold no triggers or strings
    with semicolons, which keeps this simple and exact)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]


def runs_outside_transaction(script: str) -> bool:
    """Whether a migration script asks to run outside a transaction (its first line)."""
    first = script.lstrip().split("\n", 1)[0].strip()
    return first == NO_TRANSACTION


def should_migrate(
    current: int,
    latest: int,
    *,
    migrate: bool | None,
    read_only: bool,
    embedded: bool,
    where: str,
    command: str,
) -> bool:
    """Whether to apply the migrations after ``current`` (0: an empty database), or a
    StoreError saying what is wrong and what to do. ``where`` names the database in the
    sentence; ``command`` is the ``sagakit migrate --db ...`` line that upgrades it."""
    if current > latest + 1:
        raise StoreError(
            f"{where} has sagakit schema version {current}, newer than this sagakit knows "
            f"({latest}) by more than one release; upgrade sagakit"
        )
    if current >= latest:
        # the next release's schema only expanded this one's: run on it as it is
        return False
    if read_only:
        if current == 0:
            raise StoreError(
                f"{where} holds no sagakit schema (no sagas): check the URL, or create the "
                f"schema with `{command}` (or by starting a worker)"
            )
        raise StoreError(
            f"{where} has sagakit schema version {current}, older than this sagakit's "
            f"({latest}); a reader does not upgrade it: run `{command}` first"
        )
    if migrate is True:
        return True
    if migrate is False:
        what = (
            "holds no sagakit schema"
            if current == 0
            else (f"has sagakit schema version {current}, older than this sagakit's ({latest})")
        )
        raise StoreError(
            f"{where} {what}, and this store was opened with migrate=False: run `{command}` "
            "first (or open an engine with migrate=True)"
        )
    if current == 0 or embedded:
        return True
    raise StoreError(
        f"{where} has sagakit schema version {current}, older than this sagakit's ({latest}); "
        f"upgrades are deliberate: run `{command}` (or open the engine with migrate=True), "
        "once, before starting the new workers"
    )
