"""The service's errors: JSON bodies `{"error": {"code", "message", "details"}}` with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .request_ids import HEADER, current_request_id
from .store import STORE_ERRORS

log = logging.getLogger(__name__)


def error_body(code: str, message: str, details: object = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, details: object = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.retry_after = status, code, message, details, retry_after

    def body(self) -> dict:
        return error_body(self.code, self.message, self.details)

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else None


def unknown_items(item_ids: list[str], where: str) -> ServiceError:
    return ServiceError(422, "unknown_items", f"unknown item ids in {where}: {', '.join(item_ids[:20])}",
                        details={"item_ids": item_ids})


def catalog_unavailable(retry_after: int) -> ServiceError:
    return ServiceError(503, "catalog_unavailable", "no catalog loaded yet", retry_after=retry_after)


def encodable(value):
    """`value`, with any text that UTF-8 cannot encode (a lone surrogate in a field name) escaped."""
    return value.encode("utf-8", "backslashreplace").decode() if isinstance(value, str) else value


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status, headers=headers)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Every failure answers with the error body: ours, schema violations, Redis outages, HTTP errors, bugs."""

    @app.exception_handler(ServiceError)
    async def service_error(_request, exc: ServiceError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request, exc: RequestValidationError):
        # Where and why, not the offending input: echoing it back could not always be encoded (NaN, lone
        # surrogates, undecodable bytes) and would turn a 422 into a 500.
        details = [{"loc": [encodable(part) for part in error["loc"]], "type": error["type"], "msg": encodable(error["msg"])}
                   for error in exc.errors()]
        return error_response(422, "invalid_request", "the request does not match the API schema", details)

    async def redis_down(_request, exc: Exception):
        log.warning("Redis error: %s", exc)
        return error_response(503, "redis_unavailable", "the data store is unavailable",
                              headers={"Retry-After": str(retry_after_s)})

    for error in STORE_ERRORS:
        app.add_exception_handler(error, redis_down)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_request, exc: Exception):
        log.exception("unhandled error")
        # Answered outside every middleware (Starlette's server-error layer), so the id is set here.
        request_id = current_request_id()
        return error_response(500, "internal_error", "unexpected error (logged with the request id)",
                              {"request_id": request_id}, headers={HEADER: request_id} if request_id else None)
