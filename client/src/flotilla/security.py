# distributed is untyped.
# mypy: disable-error-code="no-untyped-call"
"""TLS credentials for talking to one cluster's scheduler."""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from typing import Any

from distributed.security import Security

__all__ = ["GatewaySecurity"]


class GatewaySecurity(Security):
    """A ``distributed.Security`` built from a cluster's in-memory TLS cert and key.

    The cluster's self-signed certificate is both the only trusted CA and the client
    certificate. ``ssl`` can only load them from files, so they are written to a private
    temporary directory just long enough to build the ``SSLContext``.

    Parameters
    ----------
    tls_key : str
        The cluster's private key (PEM).
    tls_cert : str
        The cluster's certificate (PEM).
    """

    def __init__(self, tls_key: str, tls_cert: str) -> None:
        super().__init__(require_encryption=True)
        self.tls_key = tls_key
        self.tls_cert = tls_cert
        self._ctx: ssl.SSLContext | None = None
        self._ctx_lock = threading.Lock()

    def __repr__(self) -> str:
        return "GatewaySecurity<...>"

    def _ssl_context(self) -> ssl.SSLContext:
        with self._ctx_lock:
            if self._ctx is None:
                with tempfile.TemporaryDirectory(prefix="flotilla-") as tempdir:
                    key_path = os.path.join(tempdir, "dask.pem")
                    cert_path = os.path.join(tempdir, "dask.crt")
                    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(self.tls_key)
                    with open(cert_path, "w") as f:
                        f.write(self.tls_cert)
                    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cert_path)
                    ctx.verify_mode = ssl.CERT_REQUIRED
                    # Schedulers are reached through the proxy by SNI, not by host name.
                    ctx.check_hostname = False
                    ctx.load_cert_chain(cert_path, key_path)
                self._ctx = ctx
            return self._ctx

    def get_connection_args(self, role: str) -> dict[str, Any]:
        """Connection arguments for ``distributed`` comms (any role).

        Parameters
        ----------
        role : str
            ``"client"``, ``"worker"``, ... (all get the same context).

        Returns
        -------
        args : dict
            ``{"ssl_context": SSLContext, "require_encryption": True}``.
        """
        return {"ssl_context": self._ssl_context(), "require_encryption": True}

    def get_listen_args(self, role: str) -> dict[str, Any]:
        """Not supported: a gateway client never listens."""
        raise NotImplementedError("GatewaySecurity is for connecting to a cluster only")
