"""Refuse request bodies over a size limit before they are read into memory (pure ASGI middleware)."""

from __future__ import annotations

import json

from .errors import error_body


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        received = 0
        started = too_large = replaced = False

        async def limited_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started, replaced
            # The app answering a body it could not read (FastAPI makes the error a 400): answer for it.
            replaced = replaced or (too_large and not started)
            if replaced:
                if message["type"] == "http.response.start":
                    await self._refuse(send)
            else:
                await send(message)
            started = started or message["type"] == "http.response.start"

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps(error_body("body_too_large", f"request bodies are limited to {self.max_bytes} bytes",
                                     {"max_bytes": self.max_bytes})).encode()
        await send({"type": "http.response.start", "status": 422,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
