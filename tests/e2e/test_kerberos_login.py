"""Kerberos login end to end: the unmodified dask-gateway client (``auth="kerberos"``,
pykerberos) with a ticket from ``kinit``, through Envoy and auth, against a private KDC.

The client asks for ``HTTP@<host of the URL>`` and requires the mutual-auth reply token,
so the gateway is addressed as ``localhost`` (the keytab holds ``HTTP/localhost``).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_stack import running_gateway, upstream_python
from krb5_realm import Krb5Realm

pytestmark = pytest.mark.timeout(180)

CLIENT = textwrap.dedent(
    """
    import json, sys
    from dask_gateway import Gateway

    with Gateway(sys.argv[1], auth="kerberos") as gw:
        first = gw.list_clusters()
        second = gw.list_clusters()  # on the session cookie
        print(json.dumps({"first": [c.name for c in first], "second": len(second)}))
    """
)


@pytest.fixture()
def address(kdc: Krb5Realm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)  # inherited by the gateway's services
    extra = (
        f'\nc.Auth.authenticator_class = "kerberos"\n'
        f"c.KerberosAuthenticator.keytab = {str(kdc.keytab)!r}\n"
    )
    with running_gateway(tmp_path, extra) as gateway:
        yield gateway.address.replace("127.0.0.1", "localhost")


def test_upstream_client_logs_in_with_kerberos(
    kdc: Krb5Realm, address: str, tmp_path: Path
) -> None:
    python = upstream_python()
    ccache = kdc.kinit("alice")
    done = subprocess.run(
        [python, "-c", CLIENT, address],
        capture_output=True,
        text=True,
        timeout=60,
        env={**kdc.env, "PATH": "/usr/bin:/bin", "KRB5CCNAME": f"FILE:{ccache}"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"first": [], "second": 0}
    # One Kerberos round for the principal alice@EXAMPLE.TEST; the second call rode the cookie.
    auth_log = (tmp_path / "logs" / "auth.log").read_text(errors="replace")
    assert auth_log.count("user alice authenticated") == 1, auth_log[-3000:]
