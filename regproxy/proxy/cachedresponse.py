# -*- test-case-name: tests.unit.test_caching -*-
"""
Answers the cache gives in place of an upstream response.

They look like the L{IResponse} the relay expects (status, headers,
length), so the brokered and pass-through resources relay headers as they
always do; the body of a blob is then streamed by L{StreamedResponse.relay}
from the file (a complete entry or a running fill), never held in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from regproxy.cache.streaming import SourceFailed
from regproxy.proxy.relay import BytesProducer

_RANGE = re.compile(rb"^bytes=(\d*)-(\d*)$")

_log = Logger()


def parseRange(headers: Headers, size: int) -> tuple[int, int] | None:
    """
    The one byte range a C{Range} header asks for, as (first, last)
    inclusive; L{None} for the whole entry (no header, several ranges, or
    one we do not understand, which HTTP lets us answer with all of it).
    """
    values = headers.getRawHeaders(b"range") or []
    if len(values) != 1 or size == 0:
        return None
    match = _RANGE.match(values[0].strip())
    if match is None or match.group(1) == match.group(2) == b"":
        return None
    first, last = match.group(1), match.group(2)
    if first == b"":
        start, end = max(size - int(last), 0), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start > end or start >= size:
        return None
    return start, end


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def manifestMediaType(body: bytes) -> str:
    """
    A manifest's media type from its own C{mediaType} field; an OCI image
    or index by its shape when the field is left out (the spec allows it).
    """
    try:
        document = json.loads(body)
    except ValueError:
        return "application/octet-stream"
    if not isinstance(document, dict):
        return "application/octet-stream"
    declared = document.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return OCI_INDEX if "manifests" in document else OCI_MANIFEST


@implementer(IResponse)
@attrs.define
class BytesResponse:
    """
    A small answer held whole: a manifest.
    """

    code: int
    phrase: bytes
    headers: Headers
    body: bytes
    version: tuple[bytes, int, int] = (b"HTTP", 1, 1)
    request: object = None
    previousResponse: object = None

    @property
    def length(self) -> int:
        return len(self.body)

    @property
    def mediaType(self) -> str:
        return (self.headers.getRawHeaders(b"content-type") or [b""])[-1].decode(
            "latin-1"
        )

    @classmethod
    def manifest(cls, body: bytes, mediaType: str, digest: str) -> BytesResponse:
        headers = Headers(
            {
                b"content-type": [mediaType.encode("latin-1")],
                b"docker-content-digest": [digest.encode("ascii")],
                b"etag": [b'"%s"' % (digest.encode("ascii"),)],
                b"content-length": [b"%d" % (len(body),)],
            }
        )
        return cls(200, b"OK", headers, body)

    def deliverBody(self, protocol: Protocol) -> None:
        # A producer with nothing to pause stands for the transport.
        protocol.makeConnection(BytesProducer(b""))  # type: ignore[arg-type]
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


def _blobHeaders(digest: str, length: int) -> Headers:
    return Headers(
        {
            b"content-type": [b"application/octet-stream"],
            b"docker-content-digest": [digest.encode("ascii")],
            b"etag": [b'"%s"' % (digest.encode("ascii"),)],
            b"accept-ranges": [b"bytes"],
            b"content-length": [b"%d" % (length,)],
        }
    )


@implementer(IResponse)
@attrs.define
class StreamedResponse:
    """
    A blob answered from the cache's file; L{relay} sends its body.

    @ivar serve: Streams the body to a request, firing with the bytes sent.
    """

    code: int
    phrase: bytes
    headers: Headers
    length: int
    serve: Callable[[Request], Awaitable[int]]
    fill: Any = None
    version: tuple[bytes, int, int] = (b"HTTP", 1, 1)
    request: object = None
    previousResponse: object = None

    @classmethod
    def forEntry(
        cls, store, digest: str, size: int, wanted: tuple[int, int] | None
    ) -> StreamedResponse:
        """
        A complete entry, or the range of it that was asked for.
        """
        if wanted is None:
            return cls(
                200,
                b"OK",
                _blobHeaders(digest, size),
                size,
                lambda request: store.serve(request, digest, size),
            )
        first, last = wanted
        headers = _blobHeaders(digest, last - first + 1)
        headers.setRawHeaders(
            b"content-range", [b"bytes %d-%d/%d" % (first, last, size)]
        )
        return cls(
            206,
            b"Partial Content",
            headers,
            last - first + 1,
            lambda request: store.serve(request, digest, size, wanted),
        )

    @classmethod
    def forFill(
        cls, fill, digest: str, size: int, upstream: IResponse | None = None
    ) -> StreamedResponse:
        """
        A blob still arriving: with the upstream's own headers for the
        client whose request started the fill, ours for those who joined.
        """
        if upstream is not None:
            return cls(
                upstream.code,
                upstream.phrase,
                upstream.headers,
                size,
                fill.serveTo,
                fill,
            )
        return cls(200, b"OK", _blobHeaders(digest, size), size, fill.serveTo, fill)

    def deliverBody(self, protocol: Protocol) -> None:
        raise NotImplementedError("a cached blob is sent with relay()")

    def _digest(self) -> str:
        return (self.headers.getRawHeaders(b"docker-content-digest") or [b"-"])[
            -1
        ].decode("latin-1")

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    async def relay(self, request: Request) -> bool:
        """
        Send the body and finish the request; on a failure (a fill that
        broke off or did not match its digest) close the connection, so the
        client sees a truncated answer, never a short one that looks whole.
        """
        if request.method == b"HEAD" or self.length == 0:
            request.finish()
            return True
        try:
            sent = await self.serve(request)
        except (SourceFailed, CancelledError):
            request.loseConnection()
            return False
        except Exception:
            # Not a download that broke off: a fault of ours, to be seen.
            _log.failure("Serving {digest} from the cache", digest=self._digest())
            request.loseConnection()
            return False
        if getattr(request, "_disconnected", False) or request.finished:
            return False
        if sent != self.length:
            request.loseConnection()
            return False
        request.finish()
        return True
