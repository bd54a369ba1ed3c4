# -*- test-case-name: tests.unit.test_streaming -*-
"""
The edge between twisted.web's C{render} and our coroutines: run one, and
turn whatever it fails with into a registry-format answer.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from regproxy.server.errors import (
    RegistryError,
    TranslatableError,
    UpstreamError,
    UpstreamTimeout,
    methodNotAllowed,
    unavailable,
    writeError,
)

_log = Logger()


def errorForFailure(failure: Failure, what: str) -> RegistryError | None:
    """
    What to tell the client when handling its request failed; L{None} when
    the client is gone and there is nobody to tell.

    @param what: What we were talking to, for the message
        (C{"the upstream registry"}).
    """
    if failure.check(RegistryError):
        return failure.value
    if failure.check(UpstreamError):
        return failure.value.toRegistryError(what)
    if failure.check(TranslatableError):
        return failure.value.toRegistryError()
    if failure.check(CancelledError):
        return None
    if failure.check(UpstreamTimeout, netError.TimeoutError, DeferredTimeoutError):
        return unavailable(f"{what} did not answer in time", status=504)
    if failure.check(netError.DNSLookupError):
        return unavailable(f"cannot resolve the host name of {what}")
    if failure.check(netError.ConnectError):
        return unavailable(f"cannot connect to {what}")
    if failure.check(ResponseNeverReceived, ResponseFailed):
        reasons = getattr(failure.value, "reasons", [])
        detail = "; ".join(r.getErrorMessage() for r in reasons) or None
        return unavailable(
            f"{what} closed the connection without an answer", detail=detail
        )
    _log.failure("Unexpected error while talking to {what}", failure=failure, what=what)
    return RegistryError(500, "UNKNOWN", "internal error")


def renderLater(
    request: Request,
    coroutine: Coroutine[Any, Any, None],
    what: str = "the upstream registry",
) -> object:
    """
    Run C{coroutine} to answer C{request}; a failure becomes a registry
    error (never a traceback).  Returns what C{render} must return.
    """

    def failed(failure: Failure) -> None:
        if failure.check(RequestGenerationFailed) and getattr(
            request, "clientGone", False
        ):
            # The request body could not be sent on because the client
            # stopped sending it: an ordinary event, not our error.  The
            # request's own log line says it was aborted, and after how
            # many bytes (regproxy.server.site).
            return
        if failure.check(UpstreamError):
            # For the request's log line (and the upstream error count).
            request.upstreamFailure = failure.value  # type: ignore[attr-defined]
        error = errorForFailure(failure, what)
        if error is not None:
            writeError(request, error)

    Deferred.fromCoroutine(coroutine).addErrback(failed)
    return NOT_DONE_YET


class TokenEndpoint(Resource):
    """
    The shape every C{/token} of ours has: GET and POST, and a
    registry-format 405 for anything else.
    """

    isLeaf = True

    def render(self, request: Request) -> object:
        if request.method not in (b"GET", b"HEAD", b"POST"):
            methodNotAllowed(request, (b"GET", b"POST"))
            return NOT_DONE_YET
        return super().render(request)
