"""The stub model's public entry points; the implementation is in :mod:`orchestrator.stub`."""

from orchestrator.stub import StubServer, create_app

__all__ = ["StubServer", "create_app"]
