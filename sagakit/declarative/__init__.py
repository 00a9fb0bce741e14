"""The declarative front end: typed step classes put together with a builder (run in the order
they are added; ``builder.parallel()`` for parallel branches; ``add_wait`` for durable waits on
an event), compiled to an ordinary saga workflow that the engine runs with all its durability
(see docs/declarative.md).
"""

from .base_step import BaseStep
from .builder import SagaBuilder
from .definition import SagaDefinition
from .nodes import InputContext, StepRef

__all__ = ["BaseStep", "InputContext", "SagaBuilder", "SagaDefinition", "StepRef"]
