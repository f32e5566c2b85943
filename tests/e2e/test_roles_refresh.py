"""One truth for identity (issue 12): a change of a user's groups or admin rights takes
effect within ``c.Auth.roles_refresh_seconds``, for clients that hold a session cookie.

The operator edits the configuration (bob joins group ``gpu`` and becomes an admin) and
restarts auth. The unmodified dask-gateway client, which sends only its cookie once it
has one (Envoy's session route, checked by the registry), and the flotilla client (gRPC,
always through auth) both see the new roles within the refresh period, without being
recreated and without an error: the registry answers 401 to a cookie whose roles are out
of date, the upstream client re-sends its credentials, and auth decides the roles again.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import BasicAuth, GatewayPermissionError
from flotilla import Gateway as FlotillaGateway
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway, upstream_python
from helpers import wait_for

pytestmark = pytest.mark.timeout(180)

REFRESH = 2

CONFIG = f"""
from flotilla_registry.options import Options, Select

c.Auth.roles_refresh_seconds = {REFRESH}
c.Auth.cookie_max_age_seconds = 300

def _options(user):
    accelerators = ["none", "a100"] if "gpu" in user.groups else ["none"]
    return Options(Select("accelerator", accelerators, default="none", label="Accelerator"))

c.Registry.cluster_options = _options
"""

PROMOTED = """
c.BasicAuthenticator.user_groups = {"bob": ["gpu"]}
c.Auth.admin_users = ["bob"]
"""

# Run by the upstream client's interpreter: one Gateway object for the whole test. It
# prints the choices it is offered, waits for "go", then asks until a100 is among them.
WATCH = textwrap.dedent(
    """
    import json, sys, time
    from dask_gateway import BasicAuth, Gateway

    gw = Gateway(sys.argv[1], auth=BasicAuth("bob", "x"))

    def choices():
        return gw.cluster_options()._fields["accelerator"].options

    print(json.dumps({"choices": choices()}), flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + 30
    while "a100" not in choices():
        assert time.monotonic() < deadline, "a100 never offered"
        time.sleep(0.1)  # poll interval of a client watching its options
    print(json.dumps({"at": time.time(), "choices": choices()}), flush=True)
    gw.close()
    """
)


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    with running_gateway(tmp_path, CONFIG) as gateway:
        yield gateway


def restart_auth(stack: Stack) -> None:
    """What the operator does after editing the configuration: restart auth (by PID)."""
    [child] = [c for c in stack.stack.children if c.name == "auth"]
    assert child.proc is not None
    child.proc.terminate()
    child.proc.wait(timeout=30)
    stack.stack.check_children()  # starts it again, reading the edited file
    wait_for(
        lambda: stack.request("GET", "/api/v1/options", user="carol")[0] == 200,
        30,
        "the new auth answering",
    )


def is_admin(gw: FlotillaGateway) -> bool:
    try:
        gw.list_clusters(all_users=True)
    except GatewayPermissionError:
        return False
    return True


def test_new_roles_take_effect_within_the_refresh_period(stack: Stack) -> None:
    watcher = subprocess.Popen(
        [upstream_python(), "-c", WATCH, stack.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None and watcher.stdin is not None
        assert json.loads(watcher.stdout.readline()) == {"choices": ["none"]}
        with FlotillaGateway(stack.address, auth=BasicAuth("bob")) as gw:
            assert not is_admin(gw)

            config = stack.state_dir / "flotilla_config.py"
            config.write_text(config.read_text() + PROMOTED)
            restart_auth(stack)
            changed = time.time()
            watcher.stdin.write("go\n")
            watcher.stdin.flush()

            # The flotilla client: the same Gateway, its cookie refreshed by auth.
            wait_for(lambda: is_admin(gw), REFRESH + 5, "bob's admin rights")
            admin_after = time.time() - changed

            line = watcher.stdout.readline()
            assert line, f"the upstream client failed:\n{watcher.communicate()[1][-3000:]}"
            seen = json.loads(line)
        assert watcher.wait(timeout=30) == 0, watcher.communicate()[1][-3000:]
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert seen["choices"] == ["none", "a100"]
    groups_after = seen["at"] - changed
    # Within the refresh period (the cookie was minted before the change), plus a poll
    # interval and a round trip of slack on a busy machine.
    assert groups_after < REFRESH + 1.5, groups_after
    assert admin_after < REFRESH + 1.5, admin_after
