"""
Drive a real regproxy L{Site} over an in-memory transport with raw HTTP
bytes, the way a client's socket would, and read back what it answered.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.server import Site


@attrs.frozen
class RawResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    chunked: bool

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[-1] if values else None

    def all(self, name: bytes) -> list[bytes]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]


def parseResponse(data: bytes, head: bool = False) -> tuple[RawResponse, bytes] | None:
    """
    Parse one complete HTTP/1.1 response from the start of C{data}.

    @return: The response and the bytes after it, or L{None} when C{data}
        does not hold a whole response yet.
    """
    top, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = top.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = tuple(
        (name.strip(), value.strip())
        for name, _, value in (line.partition(b":") for line in lines[1:])
    )
    response = RawResponse(status, headers, b"", False)
    if head or status in (204, 304) or 100 <= status < 200:
        return response, rest
    if (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
        body = b""
        while True:
            size, separator, rest = rest.partition(b"\r\n")
            if not separator:
                return None
            chunkSize = int(size, 16)
            if len(rest) < chunkSize + 2:
                return None
            body += rest[:chunkSize]
            rest = rest[chunkSize + 2 :]
            if chunkSize == 0:
                return attrs.evolve(response, body=body, chunked=True), rest
    contentLength = response.header(b"content-length")
    if contentLength is None:
        return attrs.evolve(response, body=rest), b""
    length = int(contentLength)
    if len(rest) < length:
        return None
    return attrs.evolve(response, body=rest[:length]), rest[length:]


class RawClient:
    """
    One client connection to C{site}.
    """

    def __init__(self, site: Site, peer: str = "127.0.0.1") -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 80),
            peerAddress=IPv4Address("TCP", peer, 40000),
        )
        self.protocol = site.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def request(
        self,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        body: bytes | None = None,
    ) -> None:
        lines = [method + b" " + path + b" HTTP/1.1", b"Host: proxy.example:8080"]
        lines += [name + b": " + value for name, value in headers]
        if body is not None:
            lines.append(b"Content-Length: %d" % (len(body),))
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def response(self, head: bool = False) -> RawResponse | None:
        parsed = parseResponse(self.transport.value(), head)
        return None if parsed is None else parsed[0]

    def completeResponse(self, head: bool = False) -> RawResponse:
        """
        The response, which the test knows is complete by now.
        """
        response = self.response(head)
        assert response is not None, self.transport.value()
        return response

    def responseAfter(
        self, flush: Callable[[], object], head: bool = False, turns: int = 20
    ) -> RawResponse | None:
        """
        The response, calling C{flush} (to let an in-memory upstream
        answer) between looks until it is complete; L{None} if it is not
        after C{turns} looks.
        """
        for _ in range(turns):
            response = self.response(head)
            if response is not None:
                return response
            flush()
        return None

    def disconnect(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))
