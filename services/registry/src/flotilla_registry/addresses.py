"""Whether the addresses of a cluster's first heartbeat are its scheduler's.

The first heartbeat sets where a cluster's routes lead: Envoy's SNI passthrough to the
scheduler address, the dashboard route, and the scheduler API the registry posts scale
requests to. Holding the cluster's token is not proof enough: a batch job's script keeps
it in the owner's staging directory while the job waits in the queue, so the owner could
send that heartbeat first and point the public port at any host and port the gateway can
reach. Before adopting the addresses the registry therefore makes a TLS handshake with
the scheduler address that trusts nothing but the cluster's own certificate (and presents
it as the client's, as the scheduler requires): only a process holding the cluster's key
gets through, which is the scheduler or something its owner runs in its place. The
dashboard and API addresses must name the same host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import Mapping

from flotilla_common import SNI_PREFIX
from flotilla_common.tls import load_keypair

__all__ = ["AddressRefused", "check_first_addresses"]


class AddressRefused(Exception):
    """The addresses are not the cluster's scheduler's; ``str()`` says why (a 422)."""


def _client_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the cluster's certificate names no host
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    load_keypair(context, cert_pem, key_pem)
    return context


def _host(address: str) -> str:
    return (urllib.parse.urlsplit(address).hostname or "").lower()


async def check_first_addresses(
    name: str, addresses: Mapping[str, str], cert_pem: str, key_pem: str, timeout: float
) -> None:
    """Raise :class:`AddressRefused` unless ``addresses`` (already well formed) are those
    of a process holding the cluster's key, on one host."""
    scheduler = addresses["scheduler_address"]
    host = _host(scheduler)
    for key in ("dashboard_address", "api_address"):
        if addresses.get(key) and _host(addresses[key]) != host:
            raise AddressRefused(
                f"{key} must be on the scheduler's host {host!r}, got {addresses[key]!r}"
            )
    port = urllib.parse.urlsplit(scheduler).port
    context = _client_context(cert_pem, key_pem)  # well under a millisecond
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, server_hostname=SNI_PREFIX + name),
            timeout,
        )
    except ssl.SSLCertVerificationError:
        raise AddressRefused(
            f"scheduler_address {scheduler} does not present this cluster's certificate"
        ) from None
    except TimeoutError:
        raise AddressRefused(
            f"scheduler_address {scheduler} did not complete a TLS handshake within {timeout:g} s"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise AddressRefused(f"scheduler_address {scheduler} is not reachable: {exc}") from None
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
