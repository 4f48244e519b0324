"""The HTTP protocol ``authdb serve`` runs: uvicorn's httptools protocol with a bound on the head.

httptools copies a header value that arrives in pieces on every read, so the time to take in a
header grows with the square of its size: a 60 MB ``Authorization`` header held the event loop
for seconds before any middleware saw the request. This protocol counts the bytes of a
request's head as they arrive and, past :data:`MAX_HEAD_BYTES`, answers 431 and closes the
connection. Smaller oversized heads reach ``HeaderLimitMiddleware``, which answers the same
431 for anything over 16 KiB of headers.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from authdb.http.middleware import HEADERS_TOO_LARGE, MAX_HEADER_BYTES

# Headers, request line and framing: the middleware's limit plus room for a long URL.
MAX_HEAD_BYTES = 4 * MAX_HEADER_BYTES

_BODY = json.dumps(HEADERS_TOO_LARGE).encode()
_REFUSAL = b"".join(
    [
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
        b"cache-control: no-store\r\n",
        b"x-content-type-options: nosniff\r\n",
        b"connection: close\r\n",
        b"\r\n",
        _BODY,
    ]
)


class HeadLimitedProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.run(..., http=HeadLimitedProtocol)``."""

    _in_head = True  # from the connection's first byte until its first head is complete
    _head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after the parser ran, so a head and body arriving in one read count nothing:
        # only reads that end inside a head do, and each costs at most one read of parsing.
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.logger.warning("Request head over %d bytes refused", MAX_HEAD_BYTES)
            self.transport.write(_REFUSAL)
            self.transport.close()
