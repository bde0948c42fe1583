"""A request body that never arrives whole is the client's error (400), not ours.

Granian reports a broken chunked framing, a body shorter than its ``Content-Length`` and a client that goes away
mid-body all the same way: ``http.disconnect`` before the last body message. Litestar answers a disconnect
while it reads a body with 500 ("client disconnected prematurely"), which every dashboard and alert would count
as a server error. This middleware turns it into ``IncompleteBodyError``: a 400 problem detail when the
connection is still open (a framing error), and nothing anyone sees when the client has really gone.
"""

from __future__ import annotations

from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send


class IncompleteBodyError(HTTPException):
    """The connection ended the request body early."""

    status_code = 400
    detail = (
        "the request body ended before it was complete (malformed chunked framing, a body shorter than its "
        "Content-Length, or a client that went away mid-body)"
    )


class CompleteBodies:
    """Litestar middleware: raises ``IncompleteBodyError`` where a handler's body read meets a disconnect."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_complete = False

        async def receive_whole_body() -> Message:
            nonlocal body_complete
            message = await receive()
            if message["type"] == "http.request":
                body_complete = not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_complete:
                raise IncompleteBodyError
            return message

        await self.app(scope, receive_whole_body, send)
