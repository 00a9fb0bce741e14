"""Start sagas served by Restate and wait for them, through the server's HTTP ingress.

    async with RestateSagaClient("http://127.0.0.1:8080") as client:
        result = await client.run(checkout, {"customer_id": "c1", "amount": 40}, saga_id="o-1")

A saga that failed raises what ``engine.run`` raises for the embedded engine:
:class:`~sagakit.errors.SagaCompensatedError` when it was rolled back,
:class:`~sagakit.errors.CompensationFailedError` when its rollback is incomplete.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from .. import serde
from ..errors import SagaError, SagaNotFoundError
from ..objects import SagaVirtualObject
from ..workflows import SagaWorkflow
from . import outcome
from .services import OPERATE_HANDLER


def _name(target: SagaWorkflow[Any, Any] | SagaVirtualObject | str) -> str:
    return target if isinstance(target, str) else target.name


class RestateSagaClient:
    """A client of the Restate ingress (``ingress_url``) and, for :meth:`cancel`, of its admin
    API (``admin_url``)."""

    def __init__(
        self, ingress_url: str, admin_url: str | None = None, *, timeout: float | None = 60.0
    ):
        self.ingress_url = ingress_url.rstrip("/")
        self.admin_url = None if admin_url is None else admin_url.rstrip("/")
        self._http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> RestateSagaClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        response = await self._http.post(
            f"{self.ingress_url}{path}",
            content=serde.dumps(body),
            headers={"content-type": "application/json", **(headers or {})},
        )
        return response

    @staticmethod
    def _result(saga_id: str, response: httpx.Response) -> Any:
        if response.status_code < 300:
            return serde.loads(response.text) if response.content else None
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        error = outcome.decode(body.get("metadata")) if isinstance(body, dict) else None
        if error is not None:
            raise outcome.error_from_json(saga_id, error)
        if response.status_code == 404:
            raise SagaNotFoundError(saga_id)
        message = body.get("message", response.text) if isinstance(body, dict) else body
        raise SagaError(f"saga {saga_id!r} failed ({response.status_code}): {message}")

    async def start(self, workflow: SagaWorkflow[Any, Any] | str, inp: Any, saga_id: str) -> str:
        """Start saga ``saga_id`` of ``workflow`` and return its Restate invocation id.
        Starting a saga id again does nothing (Restate workflows run once per key)."""
        path = f"/{quote(_name(workflow))}/{quote(saga_id, safe='')}/run/send"
        response = await self._post(path, inp)
        if response.status_code >= 300:
            self._result(saga_id, response)
        return str(response.json()["invocationId"])

    async def result(self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str) -> Any:
        """Wait for saga ``saga_id`` to end; its output, or the error it failed with."""
        path = f"/restate/workflow/{quote(_name(workflow))}/{quote(saga_id, safe='')}/attach"
        response = await self._http.get(f"{self.ingress_url}{path}")
        return self._result(saga_id, response)

    async def run(self, workflow: SagaWorkflow[Any, Any] | str, inp: Any, saga_id: str) -> Any:
        """Start the saga and wait for it, in one request; a saga id that was started before
        is not started again: its outcome is returned (see :meth:`result`)."""
        path = f"/{quote(_name(workflow))}/{quote(saga_id, safe='')}/run"
        response = await self._post(path, inp)
        if response.status_code == 409 and "already invoked" in response.text:
            return await self.result(workflow, saga_id)
        return self._result(saga_id, response)

    async def signal(
        self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str, name: str, payload: Any = None
    ) -> None:
        """Send the saga the signal ``name``; the saga's next ``wait_for_signal(name)`` that
        has no signal yet takes it."""
        path = f"/{quote(_name(workflow))}/{quote(saga_id, safe='')}/signal"
        self._result(saga_id, await self._post(path, {"name": name, "payload": payload}))

    async def call(
        self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str, handler: str, inp: Any = None
    ) -> Any:
        """Call a handler of a long workflow (``@wf.handler()``) on saga ``saga_id``."""
        path = f"/{quote(_name(workflow))}/{quote(saga_id, safe='')}/{quote(handler)}"
        return self._result(saga_id, await self._post(path, inp))

    async def object_call(
        self, obj: SagaVirtualObject | str, key: str, handler: str, inp: Any = None
    ) -> Any:
        """Call a virtual object's handler for ``key`` (exclusive calls run one at a time)."""
        path = f"/{quote(_name(obj))}/{quote(key, safe='')}/{quote(handler)}"
        return self._result(f"{_name(obj)}/{key}", await self._post(path, inp))

    # -- operators: parked steps (on_exhausted="park") ---------------------------------------

    async def _operate(
        self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str, request: dict[str, Any]
    ) -> Any:
        path = f"/{quote(_name(workflow))}/{quote(saga_id, safe='')}/{OPERATE_HANDLER}"
        return self._result(saga_id, await self._post(path, request))

    async def parked(self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str) -> list[Any]:
        """The saga's parked steps, first first: ``{"step", "seq", "error"}`` each."""
        return list(await self._operate(workflow, saga_id, {"action": "show"}))

    async def retry_step(
        self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str, *, step: str | None = None
    ) -> None:
        """Run the parked step (``step``, or the first parked) again, with a fresh retry budget.
        Raises :class:`~sagakit.errors.SagaError` when no such step is parked."""
        await self._operate(workflow, saga_id, {"action": "retry", "step": step})

    async def skip_step(
        self,
        workflow: SagaWorkflow[Any, Any] | str,
        saga_id: str,
        mock_output: Any = None,
        *,
        step: str | None = None,
    ) -> None:
        """Give the parked step ``mock_output`` as its output and go on; a skipped step is not
        compensated. An output that does not fit the step's model leaves it parked."""
        request = {"action": "skip", "step": step, "output": mock_output}
        await self._operate(workflow, saga_id, request)

    async def compensate(
        self, workflow: SagaWorkflow[Any, Any] | str, saga_id: str, *, step: str | None = None
    ) -> None:
        """Give up the parked step: the saga rolls back (a hybrid step's compensation runs)."""
        await self._operate(workflow, saga_id, {"action": "compensate", "step": step})

    async def cancel(self, invocation_id: str) -> None:
        """Cancel a saga through Restate's admin API: the saga stops at its next durable
        operation and runs its compensations (it ends COMPENSATED or FAILED)."""
        if self.admin_url is None:
            raise SagaError("cancel needs the admin API: RestateSagaClient(..., admin_url=...)")
        response = await self._http.patch(
            f"{self.admin_url}/invocations/{quote(invocation_id, safe='')}/cancel"
        )
        if response.status_code >= 300:
            raise SagaError(f"cancelling {invocation_id} failed: {response.text}")
