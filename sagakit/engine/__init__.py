"""The durable executor: replay, compensation, leases and the worker loop."""

from .engine import Engine
from .handles import SagaHandle
from .snapshots import EventSnapshot, SagaSnapshot, StepSnapshot

__all__ = ["Engine", "EventSnapshot", "SagaHandle", "SagaSnapshot", "StepSnapshot"]
