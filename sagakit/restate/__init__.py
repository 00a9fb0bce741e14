"""sagakit on Restate: the same saga definitions, served by a Restate server, with Restate's
journal doing the durability instead of a sagakit store. Needs the ``sagakit[restate]`` extra.

    app = sagakit.restate.app(checkout, cart)     # an ASGI app: serve it with hypercorn

See docs/restate.md for what maps to what, and what is not supported yet.
"""

from .client import RestateSagaClient
from .driver import RestateDriver
from .services import app, object_service, saga_service

__all__ = ["RestateDriver", "RestateSagaClient", "app", "object_service", "saga_service"]
