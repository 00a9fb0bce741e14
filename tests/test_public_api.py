"""The public API is a contract: outside code imports these names from ``sagakit``.

Adding a public name means adding it here; removing or renaming one breaks users.
"""

import inspect
from datetime import timedelta

import sagakit

#: every name issue 2 promises, importable from ``sagakit``
PROMISED = {
    "saga_step",
    "saga_step_strict",
    "create_saga_step",
    "create_saga_step_strict",
    "SagaStepOptions",
    "StepResponse",
    "saga_workflow",
    "create_saga_workflow",
    "RetryPolicy",
    "SagaError",
    "TerminalError",
    "register_terminal_errors",
    "unregister_terminal_errors",
    "clear_terminal_errors",
    "set_global_error_mapper",
    "SagaCompensatedError",
    "CompensationFailedError",
    "NonDeterminismError",
    "SagaNotFoundError",
    "UnknownWorkflowError",
    "SagaContext",
    "Engine",
    "SagaHandle",
    "SagaSnapshot",
    "SagaStatus",
}

#: every name issue 5 (long-running sagas) promises, importable from ``sagakit``
PROMISED_LONG_RUNNING = {
    "SagaTimeoutError",
    "SagaWorkflowOptions",
    "create_saga_long_workflow",
    "create_saga_virtual_object",
}

#: every name issue 6 (composition and the declarative front end) promises
PROMISED_COMPOSITION = {
    "run_nested_saga",
    "create_saga_module",
}

#: the declarative front end of issue 6
PROMISED_DECLARATIVE = {"BaseStep", "SagaBuilder", "StepRef", "ExponentialRetry"}

#: what issue 7 (operating live sagas) promises
PROMISED_OPERATIONS = {"SagaAdmin"}

#: the whole public surface as it stands
ALL = (
    PROMISED
    | PROMISED_LONG_RUNNING
    | PROMISED_COMPOSITION
    | PROMISED_DECLARATIVE
    | PROMISED_OPERATIONS
    | {"SagaPage", "AuditEntry", "SagaCancelledError", "SagaStateError"}
    # issue 17: flow control (queues, their limits as the store has them, the admin's errors)
    | {"Queue", "RateLimit", "QueueDeduplicatedError", "QueueLimits", "QueueState"}
    | {"QueueNotFoundError"}
    # issue 17: cron schedules (engine.schedule), as declared and as the store has them
    | {"Schedule", "ScheduleState", "ScheduleNotFoundError"}
    # issue 15: services (dependency injection) and typed clients
    | {"ServiceScope", "ServicesFactory", "WorkflowClient", "LongWorkflowClient", "ObjectClient"}
    # issue 20: transactional steps (writes that commit with their journal entry)
    | {"saga_transaction", "create_saga_transaction", "TransactionStep", "TransactionContext"}
    | {"TransactionsUnsupportedError"}
    # issue 20: remote steps (saga.send_command) and the participants that answer them
    | {"Participant", "CommandContext", "RemoteCommandError", "RemoteTimeoutError"}
    # issue 21: a payload over Engine(max_payload_bytes=...)
    | {"PayloadTooLargeError"}
    # issue 21: the runs of a saga that continued as new (engine.admin.runs)
    | {"RunSummary"}
    # issue 21: one engine over several databases, sagas placed by a hash
    | {"ShardedStore"}
    | {
        "InputContext",
        "SagaDefinition",
        "SagaDefinitionError",
        "ChildSaga",
        "SagaModule",
        "DurablePromise",
        "HandlerContext",
        "ObjectContext",
        "PromiseAlreadyCompletedError",
        "PromiseRejectedError",
        "SagaFinishedError",
        "SagaLongWorkflow",
        "SagaVirtualObject",
        "SharedObjectContext",
        "UnknownHandlerError",
        "EngineNotStartedError",
        "ErrorInfo",
        "OutputNotSerializableError",
        "SagaConflictError",
        "SagaStep",
        "SagaValidationError",
        "SagaWorkflow",
        "SagaWorkflowOptions",
        "StepFailedError",
        "StepSnapshot",
        "EventSnapshot",
        "StoreError",
        "__version__",
    }
)


def test_all_is_pinned() -> None:
    assert len(sagakit.__all__) == len(set(sagakit.__all__)), "duplicates in __all__"
    assert set(sagakit.__all__) == ALL


def test_every_promised_name_is_importable() -> None:
    assert set(sagakit.__all__) >= PROMISED
    namespace: dict[str, object] = {}
    exec(f"from sagakit import {', '.join(sorted(PROMISED))}", namespace)
    for name in sagakit.__all__:
        assert getattr(sagakit, name) is not None, name


def test_every_public_error_subclasses_saga_error() -> None:
    errors = [
        obj
        for name in sagakit.__all__
        if isinstance(obj := getattr(sagakit, name), type) and issubclass(obj, BaseException)
    ]
    assert len(errors) >= 12
    for error in errors:
        assert issubclass(error, sagakit.SagaError), error
    # the validation and lookup errors are also what Python code expects them to be
    assert issubclass(sagakit.SagaValidationError, ValueError)
    assert issubclass(sagakit.SagaNotFoundError, LookupError)
    assert issubclass(sagakit.UnknownWorkflowError, LookupError)
    assert issubclass(sagakit.StepFailedError, sagakit.TerminalError)
    assert issubclass(sagakit.OutputNotSerializableError, sagakit.TerminalError)


def test_saga_statuses() -> None:
    assert [s.value for s in sagakit.SagaStatus] == [
        "QUEUED",
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "PARKED",
        "COMPLETED",
        "COMPENSATING",
        "COMPENSATED",
        "FAILED",
        "CANCELLED",
    ]
    terminal = {s for s in sagakit.SagaStatus if s.is_terminal}
    assert terminal == {
        sagakit.SagaStatus.COMPLETED,
        sagakit.SagaStatus.COMPENSATED,
        sagakit.SagaStatus.FAILED,
        sagakit.SagaStatus.CANCELLED,
    }


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_signatures_of_the_issue() -> None:
    P = inspect.Parameter
    step_params = [
        ("name", P.POSITIONAL_OR_KEYWORD, P.empty),
        ("compensate", P.POSITIONAL_OR_KEYWORD, None),
        ("retry", P.KEYWORD_ONLY, None),
        ("compensation_retry", P.KEYWORD_ONLY, None),
        ("timeout", P.KEYWORD_ONLY, None),
        ("on_exhausted", P.KEYWORD_ONLY, "compensate"),
    ]
    assert _params(sagakit.saga_step) == step_params
    assert _params(sagakit.saga_step_strict) == step_params
    for create in (sagakit.create_saga_step, sagakit.create_saga_step_strict):
        assert [p[0] for p in _params(create)] == ["name", "run", "compensate", "options"]
    # issue 16: @saga_workflow("Checkout", version="2")
    assert [p[0] for p in _params(sagakit.saga_workflow)] == ["name", "options", "version"]
    assert _params(sagakit.saga_workflow)[1][1] == P.KEYWORD_ONLY
    assert _params(sagakit.saga_workflow)[2][1] == P.KEYWORD_ONLY
    assert [p[0] for p in _params(sagakit.create_saga_workflow)][:3] == [
        "name",
        "handler",
        "options",
    ]
    engine_params = inspect.signature(sagakit.Engine).parameters
    assert {"app_version", "retention", "services"} <= set(engine_params)
    engine = inspect.signature(sagakit.Engine)
    assert engine.parameters["url"].default == "sqlite:///sagakit.db"
    assert engine.parameters["lease"].default == timedelta(seconds=30)
    assert engine.parameters["lease"].kind == P.KEYWORD_ONLY
    start = inspect.signature(sagakit.Engine.start)
    assert list(start.parameters)[:4] == ["self", "workflow", "inp", "saga_id"]
    assert start.parameters["saga_id"].default is None
    result = inspect.signature(sagakit.SagaHandle.result)
    assert result.parameters["timeout"].default is None


def test_admin_signatures_of_issue_7() -> None:
    admin = sagakit.SagaAdmin
    assert isinstance(sagakit.Engine.admin, property)
    listing = inspect.signature(admin.list_sagas)
    assert [(n, p.default) for n, p in listing.parameters.items()][1:] == [
        ("status", None),
        ("name", None),
        ("created_after", None),
        ("created_before", None),
        ("limit", 50),
        ("cursor", None),
        # the operator's search (issue 19), keyword-only
        ("id_prefix", None),
        ("where", ()),
    ]
    assert list(inspect.signature(admin.get_saga).parameters)[1:] == ["saga_id"]
    assert list(inspect.signature(admin.count_by_status).parameters)[1:] == []
    assert list(inspect.signature(admin.skip_step).parameters)[1:3] == ["saga_id", "mock_output"]
    assert list(inspect.signature(admin.cancel).parameters)[1:3] == ["saga_id", "reason"]
    for action in (admin.retry_step, admin.compensate, admin.resume):
        assert list(inspect.signature(action).parameters)[1] == "saga_id"


def test_admin_health_signature_of_issue_19() -> None:
    health = inspect.signature(sagakit.SagaAdmin.health).parameters
    assert [(n, p.default) for n, p in health.items()][1:] == [
        ("max_running_age", timedelta(minutes=10)),
        ("max_failed", 0),
        ("max_parked", None),
        ("max_stranded", 0),
        ("max_queue_age", None),
        ("examples", 3),
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(health.values())[1:])


def test_queue_admin_signatures_of_issue_17() -> None:
    admin = sagakit.SagaAdmin
    assert list(inspect.signature(admin.queues).parameters)[1:] == []
    limits = inspect.signature(admin.set_queue_limits).parameters
    assert list(limits)[1:] == [
        "name",
        "concurrency",
        "worker_concurrency",
        "rate",
        "paused",
        "reason",
        "by",
    ]
    assert all(limits[k].kind == inspect.Parameter.KEYWORD_ONLY for k in list(limits)[2:])
    assert list(inspect.signature(admin.reset_queue_limits).parameters)[1] == "name"
    assert list(inspect.signature(admin.queue_position).parameters)[1:] == ["saga_id"]


def test_retry_policy_defaults() -> None:
    policy = sagakit.RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.initial_interval == timedelta(seconds=1)
    assert policy.backoff_factor == 2.0
    assert policy.max_interval == timedelta(seconds=30)
    options = sagakit.SagaStepOptions(retry=policy, timeout=timedelta(seconds=5))
    assert (options.retry, options.compensation_retry, options.timeout) == (
        policy,
        None,
        timedelta(seconds=5),
    )


def test_step_response_defaults() -> None:
    plain = sagakit.StepResponse({"a": 1})
    assert plain.output == {"a": 1}
    assert plain.compensation_data == {"a": 1}
    nothing = sagakit.StepResponse({"a": 1}, compensation_data=None)
    assert nothing.compensation_data is None
    failure = sagakit.StepResponse.permanent_failure("declined", {"hold": 1})
    assert failure.compensation_data == {"hold": 1}
