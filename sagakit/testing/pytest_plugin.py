"""sagakit's pytest plugin: the ``saga_env`` fixture.

pytest loads it by itself once sagakit is installed (the ``pytest11`` entry point). The fixture
is an open :class:`~sagakit.testing.SagaTestEnvironment` on the memory store, closed after the
test; options for it come from a ``saga_env`` mark:

.. code-block:: python

    @pytest.mark.saga_env(workflows=[checkout], store="sqlite")
    async def test_checkout(saga_env):
        assert await saga_env.run(checkout, {...}) == ...

The fixture is async: it needs pytest-asyncio (``asyncio_mode = "auto"``, or mark the tests
``@pytest.mark.asyncio``). Nothing of sagakit is imported until a test uses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .environment import SagaTestEnvironment

_MARK = (
    "saga_env(**options): the options of the saga_env fixture's SagaTestEnvironment "
    "(workflows=[...], store='sqlite', start=..., any Engine keyword)"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARK)


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("saga_env")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError(
            "@pytest.mark.saga_env takes keywords only: "
            "@pytest.mark.saga_env(workflows=[checkout], store='sqlite')"
        )
    return dict(marker.kwargs)


async def _environment(request: pytest.FixtureRequest) -> AsyncIterator[SagaTestEnvironment]:
    """An open SagaTestEnvironment (options from a ``saga_env`` mark), closed after the test."""
    from .environment import SagaTestEnvironment

    async with SagaTestEnvironment(**_options(request)) as env:
        yield env


def _needs_pytest_asyncio() -> None:
    raise pytest.UsageError(
        "the saga_env fixture is async and needs pytest-asyncio: pip install pytest-asyncio "
        "(and set asyncio_mode = 'auto', or mark the tests @pytest.mark.asyncio)"
    )


saga_env: Any
try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the suite has pytest-asyncio
    saga_env = pytest.fixture(name="saga_env")(_needs_pytest_asyncio)
else:
    saga_env = pytest_asyncio.fixture(name="saga_env")(_environment)
