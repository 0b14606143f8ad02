"""Dependencies the routes share (FastAPI `Depends`): the process's services and the caller's scopes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from .errors import ServiceError
from .services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def caller_scopes(services: ServicesDep,
                  key: str | None = Security(APIKeyHeader(name="X-API-Key", auto_error=False))) -> frozenset[str]:
    return services.keys.scopes(key)


Scopes = Annotated[frozenset[str], Depends(caller_scopes)]


def require(scope: str):
    """A dependency: the caller's key has `scope` (401 without a valid key, 403 with one that lacks it)."""

    def check(scopes: Scopes) -> frozenset[str]:
        if scope not in scopes:
            if not scopes:
                raise ServiceError(401, "unauthorized", "this endpoint needs a valid X-API-Key header")
            raise ServiceError(403, "forbidden", f"this key lacks the {scope!r} scope")
        return scopes

    return check
