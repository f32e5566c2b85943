"""One exception type per failure kind, mapped to gRPC status codes in one place."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = ["ErrorInterceptor", "FlotillaError"]

log = logging.getLogger(__name__)


class FlotillaError(Exception):
    """An error with a user-safe message and a gRPC status code.

    ``log_message`` is for the server log only (it may name paths, hosts, pids).
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        log_message: str | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.log_message = log_message or message
        self.reason = reason

    def to_status(self) -> status_pb2.Status:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.ErrorInfo(reason=self.reason or self.code.name, domain="flotilla")
        )
        return status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=[detail]
        )


def _is_stream(handler: grpc.RpcMethodHandler) -> bool:
    return bool(handler.response_streaming or handler.request_streaming)


class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns FlotillaError into its status and anything unexpected into INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or _is_stream(handler) or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except FlotillaError as exc:
                log.info("%s: %s (%s)", method, exc.log_message, exc.code.name)
                await context.abort_with_status(rpc_status.to_status(exc.to_status()))
            except (grpc.aio.AbortError, grpc.RpcError):
                raise
            except Exception:
                log.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
