"""The durable executor: replay, compensation, leases and the worker loop."""

from .engine import Engine, SagaHandle
from .snapshots import SagaSnapshot, StepSnapshot

__all__ = ["Engine", "SagaHandle", "SagaSnapshot", "StepSnapshot"]
