"""The hub server fixtures of tests/readers/hub, for the audit tests over HTTP."""

from tests.readers.hub.conftest import hub, hub_server

__all__ = ["hub", "hub_server"]
