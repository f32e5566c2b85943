"""gRPC adapter: Envoy's ``envoy.service.auth.v3.Authorization/Check`` <-> ``Checker``."""

from __future__ import annotations

import logging
import time

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from .checker import Checker, Decision, RequestInfo
from .metrics import AuthMetrics

__all__ = ["SERVICE_NAME", "AuthorizationServicer", "request_info", "to_check_response"]

log = logging.getLogger(__name__)

SERVICE_NAME: str = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"].full_name

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD

_RPC_CODES = {
    302: code_pb2.UNAUTHENTICATED,  # a step of a browser sign-in
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
}


def _headers(http: attribute_context_pb2.AttributeContext.HttpRequest) -> dict[str, str]:
    headers = {key.lower(): value for key, value in http.headers.items()}
    # With encode_raw_headers, Envoy sends header_map (possibly raw bytes) instead.
    for entry in http.header_map.headers:
        value = entry.value or entry.raw_value.decode("latin-1")
        key = entry.key.lower()
        if key in headers:
            headers[key] += ("; " if key == "cookie" else ", ") + value
        else:
            headers[key] = value
    return headers


def request_info(request: external_auth_pb2.CheckRequest) -> RequestInfo:
    """The request Envoy asks about, as the checker sees it."""
    http = request.attributes.request.http
    return RequestInfo(method=http.method, path=http.path, headers=_headers(http))


def _option(key: str, value: str, action: int) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=action
    )


def to_check_response(decision: Decision) -> external_auth_pb2.CheckResponse:
    """Envoy's answer for ``decision``."""
    if decision.allowed:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[_option(k, v, _OVERWRITE) for k, v in decision.request_headers],
                headers_to_remove=list(decision.headers_to_remove),
                response_headers_to_add=[
                    _option(k, v, _APPEND) for k, v in decision.response_headers
                ],
            ),
        )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=_RPC_CODES.get(decision.status_code, code_pb2.INTERNAL), message=decision.error
        ),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=decision.status_code),
            # Several cookies may be set at once (a sign-in's session and state).
            headers=[
                _option(k, v, _APPEND if k == "set-cookie" else _OVERWRITE)
                for k, v in decision.response_headers
            ],
            body=decision.body,
        ),
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Envoy's ext_authz service, answering from a ``Checker``."""

    def __init__(self, checker: Checker, metrics: AuthMetrics | None = None) -> None:
        self.checker = checker
        self.metrics = metrics or AuthMetrics()

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        """Allow or deny one request."""
        started = time.perf_counter()
        decision = await self.checker.check(request_info(request))
        self.metrics.decided(decision, time.perf_counter() - started)
        return to_check_response(decision)
