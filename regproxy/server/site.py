# -*- test-case-name: tests.unit.test_forward -*-
"""
The HTTP server every request passes through: the connection, the request
class, the root of the resource tree and the one log line per request.

What hangs under the root is decided by L{regproxy.app}.
"""

from __future__ import annotations

import json
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from regproxy.metrics import Metrics
from regproxy.server.cors import CORSPolicy
from regproxy.server.drain import Connections
from regproxy.server.errors import errorBody, notFound
from regproxy.server.forwarded import ClientView, TrustedProxies
from regproxy.server.request import StreamingRequest

_log = Logger()


class JSONResource(Resource):
    """
    A fixed JSON answer.
    """

    isLeaf = True

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__()
        self._code = code
        self._body = body

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self._code)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        return self._body


def healthResource() -> IResource:
    return JSONResource(200, json.dumps({"status": "ok"}).encode() + b"\n")


class RootResource(Resource):
    """
    The top of the tree: named children, and a registry-format 404 for
    everything else.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        error = notFound(f"no such path: {request.path.decode('latin-1')[:200]}")
        return JSONResource(error.status, error.body())

    def render(self, request: Request) -> bytes:
        return self.getChild(b"", request).render(request)


class RegproxyChannel(http.HTTPChannel):
    """
    Our HTTP/1.1 connection: malformed requests (huge headers, bad
    chunking) get a registry-format error instead of a bare status line.

    A TLS handshake sent to a plain listener is refused at once: clients
    told that a registry is insecure try HTTPS first and fall back to HTTP
    only when that fails, and without this they wait for their handshake
    timeout (ten seconds for docker and skopeo) on every command.

    A request's line and headers must all arrive within the site's
    C{headerTimeout} seconds of the head's first byte (of the connection's
    start, for the first), however slowly they trickle: Twisted's own idle
    timeout restarts with every byte, so it never ends a slowloris.  Bodies
    and the wait between requests on a kept-alive connection are not
    covered.

    It tells the site's L{Connections} that it is open, so that a stop can
    let its request in flight finish (L{stopAfterRequest}).
    """

    _log = Logger()
    _firstBytesSeen = False
    _headDeadline: IDelayedCall | None = None
    _awaitingHead = False
    _connections: Connections | None = None
    _stopping = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._startHeadDeadline()
        connections = getattr(getattr(self, "site", None), "connections", None)
        if connections is not None:
            self._connections = connections
            connections.opened(self)

    def stopAfterRequest(self) -> None:
        """
        Stop at shutdown: close now if no request is in flight, else once
        it is answered (with C{Connection: close} when the answer has not
        started yet).
        """
        self._stopping = True
        if not self.requests:
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"Connection", [b"close"])

    def abort(self) -> None:
        # A TCP or TLS transport; ITransport itself has no abortConnection.
        cast(ITCPTransport, self.transport).abortConnection()

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        if self._stopping:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def _startHeadDeadline(self) -> None:
        timeout = getattr(getattr(self, "site", None), "headerTimeout", None)
        if timeout is not None:
            # TimeoutMixin types callLater without arguments; it is the
            # reactor's.
            self._headDeadline = self.callLater(  # type: ignore[call-arg]
                timeout, self._headTooSlow, timeout
            )

    def _cancelHeadDeadline(self) -> None:
        if self._headDeadline is not None:
            if self._headDeadline.active():
                self._headDeadline.cancel()
            self._headDeadline = None

    def _headTooSlow(self, timeout: float) -> None:
        self._headDeadline = None
        assert self.transport is not None
        self._log.info(
            "Closing the connection from {peer}: no complete request head "
            "after {timeout}s",
            peer=str(self.transport.getPeer()),
            timeout=timeout,
        )
        self._respondToBadRequestAndDisconnect(
            f"the request's line and headers did not arrive within {timeout:g}s",
            408,
            b"Request Timeout",
        )
        if self.abortTimeout is not None:
            # A client that reads nothing of the answer is cut off, as
            # HTTPChannel does for its idle timeout.
            self._abortingCall = self.callLater(
                self.abortTimeout, self.forceAbortClient
            )

    def allHeadersReceived(self) -> None:
        self._cancelHeadDeadline()
        super().allHeadersReceived()

    def requestDone(self, request: http.Request) -> None:
        # The next byte read (perhaps one already buffered, which the call
        # below replays) starts the next head.
        self._awaitingHead = True
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelHeadDeadline()
        super().connectionLost(reason)
        if self._connections is not None:
            self._connections.closed(self)

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHead and data:
            self._awaitingHead = False
            self._startHeadDeadline()
        if not self._firstBytesSeen and data:
            self._firstBytesSeen = True
            if data[:1] == b"\x16":
                self._respondToBadRequestAndDisconnect(
                    "this port speaks plain HTTP, not TLS"
                )
                return
        super().dataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect(
            "request line or header too long", 431, b"Request Header Fields Too Large"
        )

    def _respondToBadRequestAndDisconnect(
        self,
        message: str = "malformed HTTP request",
        status: int = 400,
        phrase: bytes = b"Bad Request",
    ) -> None:
        body = errorBody("BAD_REQUEST", message)
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, phrase, len(body))
            + body
        )
        self.loseConnection()


class LoggingRequest(StreamingRequest):
    """
    Notes what the one log line per request needs: when the request
    started, who sent it (through trusted proxies), the account, the name
    asked for and the repository it became, and the cache outcome.  A
    request the client cuts off is logged when the connection goes, with
    the bytes sent until then.  (What the resources set for it, the
    account, names and cache outcome, is declared on L{StreamingRequest}.)
    """

    aborted = False
    logged = False
    inFlight = False
    _clientView: ClientView | None = None

    def __init__(self, channel, *args, **kwargs) -> None:
        super().__init__(channel, *args, **kwargs)
        self.site = getattr(channel, "site", None)
        reactor = getattr(self.site, "reactor", None)
        self.startedAt = reactor.seconds() if reactor is not None else None

    @property
    def clientView(self) -> ClientView:
        """
        The client's address and the scheme and host it used, as far as
        trusted proxies tell (see L{regproxy.server.forwarded}).
        """
        if self._clientView is None:
            trusted = getattr(self.site, "trustedProxies", None) or TrustedProxies()
            self._clientView = trusted.view(self)
        return self._clientView

    def process(self) -> None:
        metrics = getattr(self.site, "metrics", None)
        if metrics is not None and not self.inFlight:
            self.inFlight = True
            metrics.inFlight.inc()
        # Site.buildProtocol sets the channel's site; HTTPChannel does not
        # declare it.
        policy = getattr(self.channel.site, "cors", None)  # type: ignore[attr-defined]
        if policy is not None and policy.apply(self):
            return
        super().process()

    def connectionLost(self, reason: Failure) -> None:
        site = self.site
        # Resolve the client view while the transport is still known.
        self.clientView  # noqa: B018
        super().connectionLost(reason)
        if not self.finished and not self.logged and isinstance(site, RegproxySite):
            self.aborted = True
            site.log(self)


_TEXT_FORMAT = (
    "{client} {account} {method} {path} -> {code} {bytes}B {duration:.3f}s"
    " name={name} repository={repository} upstream={upstream} cache={cache}"
    "{abortedNote}"
)


def _abortedNote(aborted: bool, received: int) -> str:
    if not aborted:
        return ""
    return f" aborted after {received}B received" if received else " aborted"


def _received(request: http.Request) -> int:
    """
    The request body bytes that came in (for uploads, which stream).
    """
    body = getattr(request, "bodyStream", None)
    return body.received if body is not None else 0


class RegproxySite(Site):
    """
    A L{Site} that streams request bodies, never shows tracebacks and logs
    one line per request without query strings (which may carry secrets).

    @ivar metrics: Counts every request (see L{regproxy.metrics}).
    @ivar trustedProxies: The peers whose forwarding headers we believe.
    """

    # Twisted types this as a factory of its HTTP/2-negotiating wrapper;
    # buildProtocol works as well with a plain HTTPChannel subclass.
    protocol = RegproxyChannel  # type: ignore[assignment]
    requestFactory = LoggingRequest
    cors: CORSPolicy | None = None
    #: Seconds a client has to send a request's head (see L{RegproxyChannel}).
    headerTimeout: float | None = None
    #: The open connections, for a graceful stop.
    connections: Connections | None = None
    displayTracebacks = False
    metrics: Metrics | None = None
    trustedProxies: TrustedProxies | None = None
    #: The LAN cache's forwarder (opened and closed by regproxy.tap's
    #: CacheService) and the --warm-fleet follower, set by regproxy.app.
    # The LAN cache and the fleet warmer, when on: set by the composition
    # root (proxy/cachesetup.py); the server itself only hands them on.
    cache: Any = None
    warmer: Any = None
    _log = Logger()

    def log(self, request: http.Request) -> None:
        if getattr(request, "logged", False):
            return
        request.logged = True  # type: ignore[attr-defined]
        started = getattr(request, "startedAt", None)
        duration = self.reactor.seconds() - started if started is not None else 0.0
        aborted = getattr(request, "aborted", False)
        # An aborted request's status is what it would have been; 499 (as
        # nginx logs it) when none was sent.
        code = request.code if request.startedWriting or not aborted else 499
        if self.metrics is not None:
            if getattr(request, "inFlight", False):
                self.metrics.inFlight.dec()
            self.metrics.observeRequest(
                request.method, request.path, code, request.sentLength, duration
            )
        view = getattr(request, "clientView", None)
        received = _received(request)
        self._log.info(
            _TEXT_FORMAT,
            regproxy_request=True,
            client=view.address if view is not None else "-",
            account=getattr(request, "accountName", None) or "-",
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1")[:300],
            name=getattr(request, "imageName", None) or "-",
            repository=getattr(request, "upstreamRepository", None) or "-",
            code=code,
            bytes=request.sentLength,
            duration=duration,
            upstream=_upstreamField(request),
            cache=_cacheField(request),
            aborted=aborted,
            received=received,
            abortedNote=_abortedNote(aborted, received),
        )


def _cacheField(request: http.Request) -> str:
    """
    How the cache answered (hit, miss, coalesced, stale), or C{-}; C{stale}
    for any answer that stands on a remembered resolution.
    """
    if getattr(request, "staleAnswer", False):
        return "stale"
    return getattr(request, "cacheOutcome", None) or "-"


def _upstreamField(request: http.Request) -> object:
    """
    The upstream's status, and why it failed when it did:
    C{refused@registry.example:443}, C{200,timeout@registry.example:443}.
    """
    status = getattr(request, "upstreamStatus", None)
    failure = getattr(request, "upstreamFailure", None)
    if failure is None:
        return status or "-"
    return f"{status},{failure}" if status else str(failure)
