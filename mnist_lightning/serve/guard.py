"""The request guard: what LitServe's endpoint would answer with 500 is answered here with a 4xx and one line.

LitServe reads the body of `POST /predict` itself (`request.json()` or `request.form()`) and turns any
failure there into "500 Internal server error". This ASGI middleware stands in front of it and
answers, as JSON `{"detail": "..."}`:

- 413 a body above the size limit: refused from its Content-Length before a byte is read, and while
  it streams in otherwise (so a client without a Content-Length cannot bring more than the limit);
- 400 an empty body, malformed JSON or a malformed multipart body;
- 415 any other content type.

The body it read is then handed on unchanged. What the body holds (the `image` field, base64, the
image itself) is checked by the API (`mnist_lightning.serve.api`), per request. A request without
the right API key is passed on untouched, so that LitServe's auth answers it (401) before any body is read.
"""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mnist_lightning.serve.api import USAGE


class Refused(Exception):
    """A request turned away before LitServe sees it: status and reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class RequestGuard:
    """ASGI middleware for `POST path`: size limit, content type and body syntax (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, path: str, max_bytes: int, api_key: str | None = None):
        self.app = app
        self.path = path
        self.max_bytes = max_bytes
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != self.path
            or not self._authorised(scope)
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if body is None:  # the client went away
                return
            await self._check_syntax(scope, body)
        except Refused as refused:
            headers = {"Connection": "close"} if refused.status == 413 else None  # the rest of the body is not read
            await JSONResponse({"detail": refused.detail}, status_code=refused.status, headers=headers)(
                scope, receive, send
            )
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorised(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        given = _header(scope, b"x-api-key")
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        limit = f"the limit is {self.max_bytes / 2**20:g} MiB (serve --max_body_mb)"
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise Refused(413, f"request body of {int(length)} bytes is too large: {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise Refused(413, f"request body is too large: {limit}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size == 0:
            raise Refused(400, f"empty request body: {USAGE}")
        return b"".join(chunks)

    @staticmethod
    async def _check_syntax(scope: Scope, body: bytes) -> None:
        content_type = _header(scope, b"content-type") or ""
        if content_type.startswith("multipart/form-data"):  # as LitServe tells a form from JSON
            try:
                form = await Request(scope, _replay(body, _nothing_more)).form()
            except (MultiPartException, HTTPException) as err:
                reason = getattr(err, "detail", None) or getattr(err, "message", None) or str(err)
                raise Refused(400, f"malformed multipart body ({reason}): {USAGE}") from None
            await form.close()
        elif content_type.split(";")[0].strip().lower() == "application/json":
            try:
                json.loads(body)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                raise Refused(400, f"malformed JSON ({err}): {USAGE}") from None
        else:
            raise Refused(415, f"unsupported content type {content_type or '(none)'!r}: {USAGE}")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` once, then whatever the connection sends next (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _nothing_more() -> Message:
    return {"type": "http.disconnect"}
