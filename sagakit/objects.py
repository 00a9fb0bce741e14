"""Virtual objects (as in Restate and restate-saga): keyed entities with durable state.

``cart = create_saga_virtual_object("ShoppingCart")``; ``@cart.handler()`` marks an exclusive
handler ``async def add(saga, obj, inp)``: each call is a saga of its own, and the calls for one
key run one at a time, in arrival order, across every process. ``@cart.handler(kind="shared")``
marks a read-only handler ``async def items(obj, inp)`` (or ``(obj)``) that runs at once,
beside the others. The function form takes dicts of handlers:
``create_saga_virtual_object("Wallet", {"transfer": transfer}, {"balance": balance})``.

``obj.get(key)``, ``obj.set(key, value)`` and ``obj.clear(key)`` work on the state of the
object's key. In the handler's saga function a write is a journaled operation of its own; in a
step or a compensation it is written with that step's or compensation's journal entry (and
dropped if the attempt fails), so a rolled-back call leaves the state as its compensations left
it.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

from . import serde
from .context import SagaContext
from .errors import SagaError
from .steps import _positional_names, _type_hints
from .workflows import SagaWorkflow, check_version

ExclusiveFn = Callable[[SagaContext, "ObjectContext", Any], Awaitable[Any]]
SharedFn = Callable[["SharedObjectContext", Any], Awaitable[Any]]
HandlerKind = Literal["exclusive", "shared"]

#: state writes made inside the step or compensation running now: (key, JSON or None)
operation_writes: contextvars.ContextVar[list[tuple[str, str | None]] | None] = (
    contextvars.ContextVar("sagakit_operation_writes", default=None)
)


class ObjectDriver(Protocol):
    """What the engine's run provides behind an ObjectContext."""

    def object_set(self, key: str, value: str | None) -> None: ...

    async def object_get(self, key: str) -> str | None: ...

    async def object_peek(self, key: str) -> str | None: ...


class StateReader(Protocol):
    """What the engine provides behind a SharedObjectContext."""

    async def read_object_state(self, object_key: str) -> dict[str, str]: ...


class ObjectContext:
    """An exclusive handler's handle on its object's durable state."""

    __slots__ = ("_driver", "_pending", "key", "object_name")

    def __init__(self, driver: ObjectDriver, object_name: str, key: str):
        self._driver = driver
        self.object_name = object_name
        self.key = key
        #: writes made in steps and compensations, not yet journaled (visible to get)
        self._pending: dict[str, str | None] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``. In the handler's saga function the read is journaled (a
        replay reads what the first run read); in a step or compensation it is a plain read,
        like any side effect there, and sees that operation's own writes."""
        buffered = operation_writes.get()
        if buffered is not None:
            for name, value in reversed(buffered):
                if name == key:
                    return default if value is None else serde.loads(value)
            raw = await self._driver.object_peek(key)
        else:
            raw = await self._driver.object_get(key)
        return default if raw is None else serde.loads(raw)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` (JSON), durably (see the module docstring for when)."""
        # the engine's run knows its limit; another backend's driver (Restate) has its own
        limit = getattr(self._driver, "max_payload_bytes", None)
        what = f"the state {key!r} of {self.object_name}/{self.key}"
        self._write(key, serde.dumps(value, what=what, limit=limit))

    def clear(self, key: str) -> None:
        """Remove ``key``."""
        self._write(key, None)

    def _write(self, key: str, value: str | None) -> None:
        buffered = operation_writes.get()
        if buffered is not None:
            buffered.append((key, value))  # written with the step's or compensation's entry
        else:
            self._driver.object_set(key, value)

    def __repr__(self) -> str:
        return f"<ObjectContext {self.object_name}/{self.key}>"


class SharedObjectContext:
    """A shared handler's read-only handle on its object's state (as committed now)."""

    __slots__ = ("_reader", "key", "object_name")

    def __init__(self, reader: StateReader, object_name: str, key: str):
        self._reader = reader
        self.object_name = object_name
        self.key = key

    async def get(self, key: str, default: Any = None) -> Any:
        state = await self._reader.read_object_state(f"{self.object_name}/{self.key}")
        return serde.loads(state[key]) if key in state else default

    def set(self, key: str, value: Any) -> None:
        raise self._read_only()

    def clear(self, key: str) -> None:
        raise self._read_only()

    def _read_only(self) -> SagaError:
        return SagaError(
            f"handler of {self.object_name!r} is shared: it can only read; change state in an "
            "exclusive handler"
        )


class ObjectHandler:
    """One handler of a virtual object."""

    def __init__(self, obj: SagaVirtualObject, name: str, fn: Callable[..., Any], kind: str):
        if kind not in ("exclusive", "shared"):
            raise ValueError(f"handler kind must be 'exclusive' or 'shared', got {kind!r}")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {name!r} of {obj.name!r} must be an `async def`")
        positional = _positional_names(fn)
        # a shared handler may take no input, (obj), as Restate's and restate-saga's do
        wanted = 3 if kind == "exclusive" else 1
        if len(positional) < wanted:
            shape = "(saga, obj, inp)" if kind == "exclusive" else "(obj) or (obj, inp)"
            raise TypeError(f"{kind} handler {name!r} of {obj.name!r} must take {shape}")
        self.name = name
        self.kind = kind
        #: the handler as written
        self.function = fn
        #: the handler as the engine calls it: ``(saga, obj, inp)``, or ``(obj, inp)`` if shared
        self.fn: Callable[..., Awaitable[Any]] = fn if len(positional) > 1 else _without_input(fn)
        at = 2 if kind == "exclusive" else 1  # where the input is
        hint = _type_hints(fn).get(positional[at]) if len(positional) > at else None
        self.input = serde.Converter(hint, f"input of handler {name!r} of {obj.name!r}")
        self.workflow: SagaWorkflow[Any, Any] | None = None
        if kind == "exclusive":
            self.workflow = SagaWorkflow(
                f"{obj.name}/{name}", self._run_as_saga, version=obj.version
            )

    async def _run_as_saga(self, saga: SagaContext, call: dict[str, Any]) -> Any:
        obj = ObjectContext(saga._object_driver(), call["object"], call["key"])
        return await self.fn(saga, obj, self.input.validate(call["input"]))


def _without_input(fn: Callable[..., Any]) -> SharedFn:
    """A shared handler written ``(obj)``, called as ``(obj, inp)``: the input is ignored."""

    async def call(obj: SharedObjectContext, inp: Any) -> Any:
        return await fn(obj)

    return call


class SagaVirtualObject:
    """A keyed entity with durable state and handlers (see the module docstring)."""

    def __init__(self, name: str, *, version: str | None = None):
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ValueError(f"a virtual object needs a non-empty name without '/', got {name!r}")
        self.name = name
        #: the version of its exclusive handlers' sagas (see :func:`~sagakit.saga_workflow`)
        self.version = check_version(version, f"virtual object {name!r}")
        self.handlers: dict[str, ObjectHandler] = {}

    def add_handlers(
        self,
        handlers: Mapping[str, ExclusiveFn] | None = None,
        shared: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
    ) -> None:
        """Add exclusive ``handlers`` and ``shared`` ones, each a dict of name -> function
        (the function form of :meth:`handler`)."""
        groups: tuple[tuple[str, Mapping[str, Callable[..., Any]] | None, HandlerKind], ...] = (
            ("handlers", handlers, "exclusive"),
            ("shared", shared, "shared"),
        )
        for what, group, kind in groups:
            if group is None:
                continue
            if not isinstance(group, Mapping):
                raise TypeError(
                    f"virtual object {self.name!r}: {what} must be a dict of handler name -> "
                    f"async function, got {group!r}"
                )
            for key, fn in group.items():
                self.handler(key, kind=kind)(fn)

    def handler(
        self, name: str | None = None, *, kind: HandlerKind = "exclusive"
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorate an exclusive ``async def fn(saga, obj, inp)`` or, with ``kind="shared"``,
        a read-only ``async def fn(obj, inp)``."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self.handlers:
                raise SagaError(f"virtual object {self.name!r} already has a handler {key!r}")
            self.handlers[key] = ObjectHandler(self, key, fn, kind)
            return fn

        return wrap

    @property
    def workflows(self) -> list[SagaWorkflow[Any, Any]]:
        """The saga workflows of its exclusive handlers (what the engine registers)."""
        return [h.workflow for h in self.handlers.values() if h.workflow is not None]

    def __repr__(self) -> str:
        return f"<SagaVirtualObject {self.name!r} handlers={sorted(self.handlers)}>"


def create_saga_virtual_object(
    name: str,
    handlers: Mapping[str, ExclusiveFn] | None = None,
    shared: Mapping[str, Callable[..., Awaitable[Any]]] | None = None,
    *,
    version: str | None = None,
) -> SagaVirtualObject:
    """A virtual object called ``name`` (``version``: the version its exclusive calls record,
    as for :func:`~sagakit.saga_workflow`).

    Add handlers with ``@obj.handler()``, or give them here, as the TypeScript restate-saga's
    ``createSagaVirtualObject(name, handlers, sharedHandlers)`` does::

        wallet = create_saga_virtual_object(
            "Wallet",
            {"transfer": transfer},            # exclusive: async def transfer(saga, obj, inp)
            {"get_balance": get_balance},      # shared: async def get_balance(obj[, inp])
        )
    """
    obj = SagaVirtualObject(name, version=version)
    obj.add_handlers(handlers, shared)
    return obj
