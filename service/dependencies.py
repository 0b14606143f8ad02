"""Dependencies the routes share (FastAPI `Depends`): the process's services and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from .errors import ServiceError
from .services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(services: ServicesDep, key: str | None = Security(APIKeyHeader(name="X-API-Key", auto_error=False))):
    expected = services.settings.api_key
    # As bytes: compare_digest refuses non-ASCII str, and a header may carry any byte.
    if expected is not None and not (key and secrets.compare_digest(key.encode(), expected.get_secret_value().encode())):
        raise ServiceError(401, "unauthorized", "this endpoint needs a valid X-API-Key header")
