"""``SagaStateMixin``: the seed's columns on your SQLAlchemy model. The layer keeps one row per
saga in step with sagakit's state (see ``SagaEngine.sync`` for when); nothing reads the row
back to run a saga."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Enum, Integer, String, Text, Uuid, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import Mapped, mapped_column

from .state import SagaStatus


def _json_type() -> Any:
    return JSON().with_variant(JSONB(), "postgresql")


class SagaStateMixin:
    """Inherit it in your declarative model (``class OrderSagaState(Base, SagaStateMixin)``,
    with a ``__tablename__``) to get the seed's columns. Two differ from the seed's:
    ``status`` is a VARCHAR (not a PostgreSQL enum type: it also holds COMPENSATED), and
    ``step_execution_token`` is a string (sagakit's wait token)."""

    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True, default=uuid.uuid4)
    aggregation_id: Mapped[str] = mapped_column(String(255), index=True)
    trace_id: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[SagaStatus] = mapped_column(
        Enum(SagaStatus, native_enum=False, length=32),
        default=SagaStatus.RUNNING,
        index=True,
    )
    current_step_index: Mapped[int] = mapped_column(Integer, default=0)
    step_execution_token: Mapped[str | None] = mapped_column(String(255), nullable=True)
    context: Mapped[dict[str, Any]] = mapped_column(
        MutableDict.as_mutable(_json_type()), default=dict
    )
    step_history: Mapped[list[dict[str, Any]]] = mapped_column(
        MutableList.as_mutable(_json_type()), default=list
    )
    deadline_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    retry_counter: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )


__all__ = ["SagaStateMixin"]
