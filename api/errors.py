"""The one error shape every 4xx/5xx uses, and the exceptions routes raise to produce it.

Exception tree::

    ApiError                 (any status; code + message + details)
    ├── BadRequest           400 bad_request
    ├── Unauthorized         401 unauthorized
    ├── Forbidden            403 forbidden
    ├── NotFound             404 not_found
    ├── Conflict             409 conflict
    ├── PreconditionFailed   412 precondition_failed
    └── TemporalUnavailable  503 temporal_unavailable   (raised by :func:`temporal_unavailable_as_503`)

Body: ``{"error": {"code": str, "message": str, "details": any, "request_id": str}}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """What went wrong, machine- and human-readable."""

    code: str
    message: str
    details: Any = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """Raise from a route or dependency to answer with ``status`` in the error shape."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.details = details
        self.status = status or self.status
        self.headers = headers


class BadRequest(ApiError):
    """The request is well-formed JSON but cannot be acted on."""


class Unauthorized(ApiError):
    """Missing, invalid, expired or revoked credentials."""

    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    """Authenticated, but not allowed."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    """No such resource *for this caller* (other users' resources are indistinguishable from absent)."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    """The resource's current state forbids the request (duplicates, illegal transitions)."""

    status, code = 409, "conflict"


class PreconditionFailed(ApiError):
    """An ``If-Match`` precondition did not hold."""

    status, code = 412, "precondition_failed"


class TemporalUnavailable(ApiError):
    """The workflow service is down or unreachable: the request was not taken, and the caller may retry."""

    status, code = 503, "temporal_unavailable"


@asynccontextmanager
async def temporal_unavailable_as_503() -> AsyncIterator[None]:
    """Answer 503 ``temporal_unavailable`` when a Temporal call cannot reach Temporal.

    ``async with temporal_unavailable_as_503():`` around the call, or ``@temporal_unavailable_as_503()``
    on a coroutine function. Unreachable is an ``RPCError``, the ``RuntimeError`` of the lazy client
    that cannot connect, or the ``TimeoutError`` of a deadline the caller put on the call; unhandled,
    each was a 500. Catch errors that mean something else (a rejected update) inside.
    """
    try:
        yield
    except (RPCError, RuntimeError, TimeoutError):
        raise TemporalUnavailable("the workflow service is unavailable; try again shortly") from None


# Status codes Starlette raises itself (unknown route, wrong method, ...) mapped to our codes.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def request_id_of(request: Request) -> str | None:
    """The id the request-id middleware gave this request."""
    return getattr(request.state, "request_id", None)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Build an error response in the one shape."""
    body = ErrorResponse(
        error=ErrorDetail(code=code, message=message, details=details, request_id=request_id_of(request))
    )
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Echoing "input" back could return a 1 MB string or a password: report where and why only.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path through :func:`error_response`."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            request, 422, "validation_error", "request did not pass validation", _validation_details(exc)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return error_response(request, exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unhandled error in %s %s (request %s)",
            request.method,
            request.url.path,
            request_id_of(request),
            exc_info=exc,
        )
        # This handler runs outside the request-id middleware (Starlette's outermost layer): set the header here.
        request_id = request_id_of(request)
        return error_response(
            request,
            500,
            "internal_error",
            "internal server error; quote the request id",
            headers={"X-Request-ID": request_id} if request_id else None,
        )


# Documented on every router so generated clients know the error type.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Bad request",
        401: "Missing or invalid bearer token",
        404: "Not found",
        409: "Conflict",
        413: "Request body too large",
        422: "Validation error",
    }.items()
}
