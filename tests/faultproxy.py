"""A TCP proxy between a PostgreSQL client and a real server that injects network faults.

The proxy runs in the test's event loop, on a free loopback port, and forwards to the server.
It parses the wire protocol's message boundaries (a type byte and a length; the untyped
startup messages before them), so that a test can aim a fault at one message: the next one the
client sends that matches a predicate, on any connection. One fault is armed at a time and
fires once::

    async with FaultProxy(pg_server.port) as proxy:
        store = PostgresStore(proxy.url_for(pg_url))
        armed = proxy.arm(Fault.cut_after_send(), commit_of(saga_id))
        ...                                  # the operation under test
        assert armed.fired.is_set()

Faults (see :class:`FaultKind`): cut the connection before the message is sent, after it is
sent (the server may commit; its answer never reaches the client), after the answer to it
(the next ReadyForQuery) reached the client; delay it; blackhole the connection from it on
(nothing forwarded either way, sockets kept open until :meth:`FaultProxy.heal`, as a network
partition leaves them: the server keeps what it holds, locks included). Whole-proxy faults:
:meth:`FaultProxy.cut_all`, :meth:`FaultProxy.blackhole_all` and :meth:`FaultProxy.refuse`
(the port stops listening: connection refused).

Predicates see each client message and its connection: :func:`any_message`,
:func:`of_kind`, :func:`containing` (a fragment of the message's bytes: SQL text is sent only in
the first Parse of a statement on a connection, parameters in every Bind), and
:func:`commit_of`, the message that ends a write: a Sync or simple Query that commits (outside
an explicit transaction, after an Execute), or the ``COMMIT`` of a transaction, whose
transaction carried a given fragment (a saga id, an owner). Transaction state comes from the
server's ReadyForQuery messages, which the proxy reads on their way back.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


class FaultKind(StrEnum):
    """What happens at the targeted client message."""

    #: close both sides; the message is not forwarded
    CUT_BEFORE_SEND = "cut_before_send"
    #: forward the message, then close both sides before any answer reaches the client
    CUT_AFTER_SEND = "cut_after_send"
    #: forward the message and the answer (up to the next ReadyForQuery), then close
    CUT_AFTER_ANSWER = "cut_after_answer"
    #: hold the message (and what follows it on its connection) for ``seconds``
    DELAY = "delay"
    #: forward nothing more either way on this connection, the message included
    BLACKHOLE = "blackhole"
    #: forward the message, then nothing more either way: the server may commit, unheard
    BLACKHOLE_AFTER_SEND = "blackhole_after_send"


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault to arm: its kind, and for DELAY how long."""

    kind: FaultKind
    seconds: float = 0.0

    @classmethod
    def cut_before_send(cls) -> Fault:
        return cls(FaultKind.CUT_BEFORE_SEND)

    @classmethod
    def cut_after_send(cls) -> Fault:
        return cls(FaultKind.CUT_AFTER_SEND)

    @classmethod
    def cut_after_answer(cls) -> Fault:
        return cls(FaultKind.CUT_AFTER_ANSWER)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls(FaultKind.DELAY, seconds)

    @classmethod
    def blackhole(cls) -> Fault:
        return cls(FaultKind.BLACKHOLE)

    @classmethod
    def blackhole_after_send(cls) -> Fault:
        return cls(FaultKind.BLACKHOLE_AFTER_SEND)

    @property
    def is_blackhole(self) -> bool:
        return self.kind in (FaultKind.BLACKHOLE, FaultKind.BLACKHOLE_AFTER_SEND)

    def __str__(self) -> str:
        return f"delay({self.seconds:g})" if self.kind is FaultKind.DELAY else self.kind.value


@dataclass(frozen=True, slots=True)
class Message:
    """One client message as sent: ``kind`` is its type byte (``b""`` for a startup-phase
    message, which has none), ``data`` the whole message."""

    kind: bytes
    data: bytes

    @property
    def query(self) -> str | None:
        """The SQL text of a simple Query or a Parse, else None."""
        body = self.data[5:]
        if self.kind == b"Q":
            return body.split(b"\0", 1)[0].decode(errors="replace")
        if self.kind == b"P":
            parts = body.split(b"\0", 2)
            return parts[1].decode(errors="replace") if len(parts) > 1 else None
        return None

    @property
    def first_word(self) -> str:
        """The first word of a simple Query's SQL, upper case ("" for other messages)."""
        words = (self.query or "").lstrip().split(None, 1) if self.kind == b"Q" else []
        return words[0].rstrip(";").upper() if words else ""


@dataclass(eq=False)
class Link:
    """One proxied connection, as the predicates see it."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    #: the transaction status of the server's last ReadyForQuery: I idle, T in one, E failed
    status: bytes = b"I"
    #: an Execute was sent since the last Sync (a Sync then ends a statement, not a prepare)
    executed: bool = False
    #: the client messages since the last commit point, for :func:`commit_of`
    since_commit: bytearray = field(default_factory=bytearray)
    blackholed: bool = False
    #: drop what the server sends (a cut after send is under way)
    deaf: bool = False
    #: close once the next ReadyForQuery has reached the client
    cut_after_answer: bool = False
    closed: bool = False
    #: set when the client closed its side (it gave up on this connection)
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    #: set once the link is cut
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _ssl_answer: asyncio.Future[bytes] | None = None

    def is_commit_point(self, msg: Message) -> bool:
        """Does this message end a write, so that the server commits on receiving it?"""
        if msg.kind == b"S":
            return self.status == b"I" and self.executed
        if msg.kind == b"Q":
            word = msg.first_word
            if self.status == b"I":
                return word not in ("BEGIN", "START", "")
            return word in ("COMMIT", "END")
        return False

    def cut(self, *, flush_server: bool = False, flush_client: bool = False) -> None:
        """Close both sides now (a side after what was written to it, if asked)."""
        if self.closed:
            return
        self.closed = True
        self.ended.set()
        if flush_client:
            self.client.close()
        else:
            self.client.transport.abort()
        if self.server is not None:
            if flush_server:
                self.server.close()
            else:
                self.server.transport.abort()
        if self._ssl_answer is not None and not self._ssl_answer.done():
            self._ssl_answer.cancel()


#: decides whether a client message is the one a fault is aimed at
Predicate = Callable[[Message, Link], bool]


def any_message(msg: Message, link: Link) -> bool:
    """Every typed client message (not the startup handshake)."""
    return msg.kind != b""


def of_kind(*kinds: bytes) -> Predicate:
    """Messages of these types, e.g. ``of_kind(b"E")`` for Execute, ``b"S"`` Sync."""

    def match(msg: Message, link: Link) -> bool:
        return msg.kind in kinds

    return match


def containing(fragment: str | bytes) -> Predicate:
    """Typed messages whose bytes contain ``fragment`` (SQL text or a parameter value)."""
    needle = fragment.encode() if isinstance(fragment, str) else fragment

    def match(msg: Message, link: Link) -> bool:
        return msg.kind != b"" and needle in msg.data

    return match


def commit_of(fragment: str | bytes | None = None) -> Predicate:
    """The message that commits a write (see :meth:`Link.is_commit_point`) whose statements,
    since the connection's previous commit point, carried ``fragment`` (any, if None)."""
    needle = (
        None if fragment is None else fragment.encode() if isinstance(fragment, str) else fragment
    )

    def match(msg: Message, link: Link) -> bool:
        if not link.is_commit_point(msg):
            return False
        return needle is None or needle in link.since_commit or needle in msg.data

    return match


@dataclass(eq=False)
class Armed:
    """A fault waiting for its message; ``fired`` is set once it hit (``link``, ``message``)."""

    fault: Fault
    when: Predicate
    skip: int = 0
    fired: asyncio.Event = field(default_factory=asyncio.Event)
    link: Link | None = None
    message: Message | None = None


class FaultProxy:
    """Forward ``127.0.0.1:port`` to a PostgreSQL server, with faults on demand.

    Use as ``async with FaultProxy(server_port) as proxy`` (or ``start``/``stop``), and give
    the client ``proxy.url_for(url)``.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.links: set[Link] = set()
        #: how many connections were accepted, and how many links the faults cut
        self.accepted = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._armed: Armed | None = None
        self._blackhole_all = False

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.refuse()
        for link in list(self.links):
            link.cut()
        # a cut ends every handler; cancelling one would make asyncio log it as an error
        handlers = list(self._handlers)
        if handlers:
            _, stuck = await asyncio.wait(handlers, timeout=5)
            for task in stuck:
                task.cancel()

    def url_for(self, url: str) -> str:
        """``url`` (a ``postgresql://`` URL of the upstream server) pointed at the proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}"))

    # -- faults --------------------------------------------------------------------------------

    def arm(self, fault: Fault, when: Predicate = any_message, *, skip: int = 0) -> Armed:
        """Aim ``fault`` at the next client message, on any connection, that ``when`` accepts
        (after ``skip`` such messages). Replaces a fault armed before that has not fired."""
        self._armed = Armed(fault, when, skip)
        return self._armed

    def disarm(self) -> None:
        """Forget the armed fault if it has not fired."""
        self._armed = None

    def cut_all(self) -> int:
        """Close every proxied connection now; how many there were."""
        links = [link for link in self.links if not link.closed]
        for link in links:
            link.cut()
        self.cuts += len(links)
        return len(links)

    def blackhole_all(self) -> None:
        """Forward nothing on any connection, present or new, until :meth:`heal`."""
        self._blackhole_all = True
        for link in self.links:
            link.blackholed = True

    async def refuse(self) -> None:
        """Stop listening: new connections are refused until :meth:`accept` (or heal)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def accept(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            await self.start()

    async def heal(self) -> None:
        """End every fault: disarm, close the blackholed connections (as a partition that
        outlived TCP does), stop blackholing and listen again."""
        self.disarm()
        self._blackhole_all = False
        for link in list(self.links):
            if link.blackholed:
                link.cut()
                self.cuts += 1
        await self.accept()

    # -- forwarding ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.accepted += 1
        link = Link(writer, blackholed=self._blackhole_all)
        self.links.add(link)
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            link.cut()
            self.links.discard(link)
            self._handlers.discard(task)
            return
        link.server = up_writer
        if link.closed:  # cut while connecting
            up_writer.transport.abort()
        try:
            pumps = [
                asyncio.create_task(self._from_client(link, reader)),
                asyncio.create_task(self._from_server(link, up_reader)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # one side ended: a blackholed link keeps the other open until healed
                if link.blackholed:
                    await link.ended.wait()
                link.cut(flush_server=True)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self.links.discard(link)
            self._handlers.discard(task)

    async def _from_client(self, link: Link, reader: asyncio.StreamReader) -> None:
        started = False
        opaque = False
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if opaque:  # TLS: bytes we cannot parse, forwarded as they come
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    if not link.blackholed:
                        await self._send(link.server, chunk)
                    continue
                if started:
                    kind = await reader.readexactly(1)
                    size = struct.unpack("!i", await reader.readexactly(4))[0]
                    msg = Message(
                        kind, kind + struct.pack("!i", size) + await reader.readexactly(size - 4)
                    )
                    await self._client_message(link, msg)
                    continue
                size_bytes = await reader.readexactly(4)
                size = struct.unpack("!i", size_bytes)[0]
                body = await reader.readexactly(size - 4)
                code = struct.unpack("!i", body[:4])[0]
                if link.blackholed:
                    continue
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    link._ssl_answer = asyncio.get_running_loop().create_future()
                    await self._send(link.server, size_bytes + body)
                    answer = await link._ssl_answer
                    opaque = answer in (b"S", b"G")
                    continue
                await self._send(link.server, size_bytes + body)
                started = code != _CANCEL_REQUEST
        link.client_gone.set()

    async def _client_message(self, link: Link, msg: Message) -> None:
        armed = self._armed
        if link.blackholed or link.closed:
            return
        fault: Fault | None = None
        if armed is not None and armed.when(msg, link):
            if armed.skip > 0:
                armed.skip -= 1
            else:
                self._armed = None
                armed.link, armed.message = link, msg
                armed.fired.set()
                fault = armed.fault
        commit = link.is_commit_point(msg)
        link.since_commit += msg.data
        if msg.kind == b"E":
            link.executed = True
        elif msg.kind == b"S":
            link.executed = False
        if commit or msg.first_word in ("ROLLBACK", "ABORT"):
            link.since_commit.clear()
        if fault is None:
            await self._send(link.server, msg.data)
            return
        kind = fault.kind
        if kind is FaultKind.CUT_BEFORE_SEND:
            self.cuts += 1
            link.cut()
        elif kind is FaultKind.CUT_AFTER_SEND:
            link.deaf = True
            await self._send(link.server, msg.data)
            self.cuts += 1
            link.cut(flush_server=True)
        elif kind is FaultKind.CUT_AFTER_ANSWER:
            link.cut_after_answer = True
            await self._send(link.server, msg.data)
        elif kind is FaultKind.DELAY:
            await asyncio.sleep(fault.seconds)
            await self._send(link.server, msg.data)
        elif kind is FaultKind.BLACKHOLE:
            link.blackholed = True
        elif kind is FaultKind.BLACKHOLE_AFTER_SEND:
            await self._send(link.server, msg.data)
            link.blackholed = True

    async def _from_server(self, link: Link, reader: asyncio.StreamReader) -> None:
        opaque = False
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if opaque:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    if not (link.blackholed or link.deaf):
                        await self._send(link.client, chunk)
                    continue
                kind = await reader.readexactly(1)
                answer = link._ssl_answer
                if answer is not None and not answer.done():
                    # the one-byte answer to SSLRequest/GSSENCRequest, not a message
                    if not link.blackholed:
                        await self._send(link.client, kind)
                    answer.set_result(kind)
                    opaque = kind in (b"S", b"G")
                    continue
                size = struct.unpack("!i", await reader.readexactly(4))[0]
                data = kind + struct.pack("!i", size) + await reader.readexactly(size - 4)
                if link.blackholed or link.deaf:
                    continue
                if kind == b"Z":
                    link.status = data[5:6]
                    if link.cut_after_answer:
                        # closed before the client can act on the answer
                        if not link.client.is_closing():
                            link.client.write(data)
                        self.cuts += 1
                        link.cut(flush_client=True)
                        return
                await self._send(link.client, data)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter | None, data: bytes) -> None:
        if writer is None or writer.is_closing():
            return
        writer.write(data)
        await writer.drain()
