# -*- test-case-name: tests.unit.test_upstreamfailures -*-
"""
Why a request to an upstream failed, in a word a person (and a metric
label) can use: L{UpstreamError} with a cause from L{UPSTREAM_CAUSES}
and the upstream's host.

The Twisted HTTP client reports failures in many shapes: a connection
error from the endpoint, or a L{ResponseNeverReceived} wrapping what
closed the connection (a TLS alert, a reset).  This is the one place that
knows them all.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from OpenSSL import SSL
from twisted.internet import error as netError
from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.python.failure import Failure
from twisted.web._newclient import RequestGenerationFailed, _WrapperException

from regproxy.server.errors import UpstreamError, UpstreamTimeout

_DEFAULT_PORTS = {"http": 80, "https": 443}
# An OS or TLS library message is short; keep a strange one short too.
_MAX_REASON = 200


def upstreamHost(url: bytes | str) -> str:
    """
    The C{host:port} of C{url}, without any user name or password in it.
    """
    text = url.decode("latin-1") if isinstance(url, bytes) else url
    try:
        parts = urlsplit(text)
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return "-"
    if not host:
        return "-"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _tlsReason(value: BaseException) -> str | None:
    if isinstance(value, SSL.Error):
        # [('SSL routines', '', 'certificate verify failed')]
        details = [
            entry[-1]
            for entry in (value.args[0] if value.args else [])
            if isinstance(entry, tuple) and entry and entry[-1]
        ]
        return "; ".join(details) or "TLS handshake failed"
    if type(value).__name__ == "VerificationError":
        # service_identity's: the certificate is for another name.
        return "the certificate does not match the host name"
    return None


def _reason(value: BaseException) -> str:
    text = str(value).strip() or type(value).__name__
    return text[:_MAX_REASON]


def isCancellation(failure: Failure) -> bool:
    """
    Whether C{failure} is our own cancellation of a request (the client
    left, or a deadline passed), however the HTTP client wraps it.
    """
    if failure.check(CancelledError, netError.ConnectingCancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None) or []
    return any(reason.check(CancelledError) for reason in reasons)


def _classifyOne(value: BaseException) -> tuple[str, str] | None:
    tls = _tlsReason(value)
    if tls is not None:
        return "tls", tls
    if isinstance(
        value,
        (UpstreamTimeout, DeferredTimeoutError, netError.TimeoutError),
    ):
        return "timeout", "no answer in time"
    if isinstance(value, netError.DNSLookupError):
        return "dns", _reason(value)
    if isinstance(value, netError.ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(value, netError.ConnectError):
        return "refused", _reason(value)
    if isinstance(value, RequestGenerationFailed):
        # Our request body failed (the client stopped sending its upload):
        # not the upstream's doing.
        return None
    if isinstance(value, _WrapperException):
        if isCancellation(Failure(value)):
            # We cancelled it (the client left): nobody's failure.
            return None
        inner = [_classifyOne(reason.value) for reason in value.reasons]
        found = [entry for entry in inner if entry is not None]
        for cause in ("tls", "timeout"):
            for entry in found:
                if entry[0] == cause:
                    return entry
        return "reset", "the connection closed before an answer"
    if isinstance(
        value, (netError.ConnectionLost, netError.ConnectionDone, ConnectionError)
    ):
        return "reset", "the connection closed before an answer"
    return None


def classifyFailure(failure: Failure | BaseException) -> tuple[str, str] | None:
    """
    The cause (one of L{UPSTREAM_CAUSES}) and a short reason for a failure
    to reach an upstream, or L{None} when it is not one (a bug, a
    cancellation).
    """
    value = failure.value if isinstance(failure, Failure) else failure
    if isinstance(value, UpstreamError):
        return value.cause, value.reason
    return _classifyOne(value)


def asUpstreamError(
    failure: Failure | BaseException, url: bytes | str, what: str | None = None
) -> UpstreamError | None:
    """
    C{failure} as an L{UpstreamError} naming C{url}'s host, or L{None}
    when it is not a failure to reach the upstream.
    """
    value = failure.value if isinstance(failure, Failure) else failure
    if isinstance(value, UpstreamError):
        return value
    found = classifyFailure(value)
    if found is None:
        return None
    return UpstreamError(found[0], upstreamHost(url), found[1], what)
