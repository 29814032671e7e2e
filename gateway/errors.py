"""One exception family for the API, rendered in OpenAI's error shape, and the app's handlers."""

from __future__ import annotations

import json
import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol import ErrorEvent

log = logging.getLogger(__name__)

# What a broken or unreachable Redis raises: redis-py's errors, and kombu's when sending a task.
QUEUE_ERRORS = (redis.exceptions.RedisError, kombu.exceptions.OperationalError)


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> str:
        return json.dumps(self.body(), ensure_ascii=False, separators=(",", ":"))

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist.", param="model")


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ClientClosedRequest(APIError):
    """The client left before an answer (nginx's 499); nobody reads this response."""

    status = 499
    type = "invalid_request_error"
    code = "client_closed_request"


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class InternalError(APIError):
    pass


_EVENT_ERRORS: dict[str, type[APIError]] = {
    "model_not_found": NotFound,
    "context_length_exceeded": InvalidRequest,
    "invalid_request": InvalidRequest,
    "expired": ServiceUnavailable,
    "cancelled": ServiceUnavailable,
    "internal_error": InternalError,
    "worker_lost": ServiceUnavailable,
    "engine_lost": ServiceUnavailable,
}


def from_event(event: ErrorEvent) -> APIError:
    """The API error that a worker's error event stands for."""
    return _EVENT_ERRORS[event.code](event.message, param=event.param, code=event.code)


# Parts of a pydantic error location that name a union member's type, not a field.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "dict", "list", "tuple", "set", "none", "json"})


def _is_type_tag(part: str) -> bool:
    return part in _TYPE_TAGS or "[" in part or "(" in part  # e.g. list[str], function-after[...]


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    text = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _is_type_tag(str(part)):
            text += f".{part}" if text else str(part)
    return text or None


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json").response()
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param and first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return InvalidRequest(message, param=param).response()


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


class RequestTimeout(APIError):
    """The client took too long to send its request (see gateway/connections.py)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


# FastAPI's words when a body is not JSON it can parse (invalid UTF-8, nesting too deep ...).
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors raised by Starlette/FastAPI themselves, in OpenAI's shape: a client's mistake
    (4xx) is an invalid_request_error, whatever the framework called it."""
    status, detail = exc.status_code, str(exc.detail)
    if status == 400 and detail == _UNPARSABLE_BODY:
        return InvalidRequest("The request body is not valid JSON (or not UTF-8, or nested too deeply).",
                              code="invalid_json").response()  # fmt: skip
    kind = {404: NotFound, 408: RequestTimeout, 413: PayloadTooLarge}.get(status)
    if kind is None:
        kind = InvalidRequest if 400 <= status < 500 else APIError
    codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}
    error = kind(detail, code=codes.get(status), headers=dict(exc.headers or {}) or None)
    error.status = status
    return error.response()


def queue_unavailable(exc: BaseException) -> ServiceUnavailable:
    """The 503 for any of QUEUE_ERRORS."""
    return ServiceUnavailable(f"The queue is unreachable: {exc}", code="queue_unavailable")


async def _queue_error(_: Request, exc: Exception) -> JSONResponse:
    """A Redis or kombu error that no route turned into an APIError: still a 503, not a 500."""
    log.warning("the queue failed: %s", exc)
    return queue_unavailable(exc).response()


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return InternalError("The server had an error while processing your request.").response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for kind in QUEUE_ERRORS:
        app.add_exception_handler(kind, _queue_error)
    app.add_exception_handler(Exception, _unexpected)
