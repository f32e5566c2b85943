"""The whole gateway behind the real Envoy, on free ports, for end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import Gateway, reap_leftover_cluster_processes, show_logs, write_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    state_dir = tmp_path_factory.mktemp("gateway")
    config, address = write_config(state_dir)
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        yield Gateway(address, stack, state_dir)
    finally:
        stack.stop()
        # Stopping the gateway stops its clusters; anything left is a bug (and is
        # killed by PID here so it cannot outlive the test run).
        leftover = reap_leftover_cluster_processes(state_dir)
        assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"
        show_logs(state_dir / "logs")
