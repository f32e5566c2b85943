"""The whole gateway behind the real Envoy, on free ports, for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_stack import Gateway, running_gateway


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Stopping the gateway stops its clusters; anything left is a bug (and is killed by
    # PID so it cannot outlive the test run).
    with running_gateway(tmp_path_factory.mktemp("gateway")) as gateway:
        yield gateway
