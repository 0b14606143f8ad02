"""The service's errors: JSON bodies `{"error": {"code", "message", "details"}}` with the right status."""

from __future__ import annotations


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
