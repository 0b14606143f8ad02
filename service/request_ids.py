"""Request ids: every answer carries `X-Request-ID`, and the service's log lines name the request they were
written for, so that a caller's report of a failed request leads to its log lines (asgi-correlation-id)."""

from __future__ import annotations

import logging
import re
from typing import TextIO

from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware, correlation_id

HEADER = "X-Request-ID"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def is_plain_token(value: str) -> bool:
    """Whether a caller's id is kept: uuids, trace ids and load balancers' ids are short tokens. Anything else
    (spaces, control characters, kilobytes) would be written into log lines as it came, so it gets a new id."""
    return _PLAIN_TOKEN.fullmatch(value) is not None


def add_request_ids(app) -> None:
    """Take the caller's id or make one. Added last, so it wraps every other middleware and its answers
    (an oversized body refused before the app reads it included)."""
    app.add_middleware(CorrelationIdMiddleware, header_name=HEADER, validator=is_plain_token)


def current_request_id() -> str | None:
    """The id of the request being answered (None outside a request)."""
    return correlation_id.get()


def log_handler(stream: TextIO | None = None) -> logging.Handler:
    """A handler whose lines carry the request id ("-" outside a request)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    return handler
