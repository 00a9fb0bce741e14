"""restate-saga (Python) on sagakit: the same names, signatures and behaviours, over sagakit's
one engine.

Change the imports and add an engine::

    import sagakit.compat.restate as restate                  # was: import restate
    from sagakit.compat.restate_saga import (                 # was: from restate_saga import
        SagaContext, StepResponse, saga_step_strict, saga_workflow,
    )
    ...
    engine = Engine("sqlite:///app.db")                       # or "postgresql://..."
    async with engine:
        result = await engine.run(checkout_workflow, {"customer_id": "c1"})

Steps are sagakit's own steps; workflows, long-running workflows and virtual objects are
sagakit's, with restate-saga's function shapes adapted (``main(saga, ctx, input_val)``, shared
handlers ``(ctx)``); the options translate to sagakit's. Every name, its native spelling and
each difference in behaviour (with why) are in ``docs/migrating/restate-saga.md``.
"""

from ...composition import SagaModule
from ...steps import SagaStep, StepResponse
from .context import CompensationStack, SagaContext
from .definitions import (
    SagaRestateWorkflow,
    SagaVirtualObject,
    SagaWorkflowService,
    create_saga_module,
    create_saga_restate_workflow,
    create_saga_step,
    create_saga_step_strict,
    create_saga_virtual_object,
    create_saga_workflow,
    run_nested_saga,
    saga_step,
    saga_step_strict,
    saga_workflow,
)
from .options import SagaStepOptions, SagaWorkflowOptions, StepRetryPolicy, WorkflowRetryPolicy
from .registry import (
    clear_terminal_errors,
    register_terminal_errors,
    resolve_terminal_error,
    set_global_error_mapper,
    unregister_terminal_errors,
)

__all__ = [
    "CompensationStack",
    "SagaContext",
    "SagaModule",
    "SagaRestateWorkflow",
    "SagaStep",
    "SagaStepOptions",
    "SagaVirtualObject",
    "SagaWorkflowOptions",
    "SagaWorkflowService",
    "StepResponse",
    "StepRetryPolicy",
    "WorkflowRetryPolicy",
    "clear_terminal_errors",
    "create_saga_module",
    "create_saga_restate_workflow",
    "create_saga_step",
    "create_saga_step_strict",
    "create_saga_virtual_object",
    "create_saga_workflow",
    "register_terminal_errors",
    "resolve_terminal_error",
    "run_nested_saga",
    "saga_step",
    "saga_step_strict",
    "saga_workflow",
    "set_global_error_mapper",
    "unregister_terminal_errors",
]
