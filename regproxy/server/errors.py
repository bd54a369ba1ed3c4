# -*- test-case-name: tests.unit.test_errors -*-
"""
Errors in the registry's JSON format, so that every client (docker, podman,
skopeo, containerd) shows the user a message instead of a parse failure.

See the distribution spec's "Errors" section: the body is
C{{"errors": [{"code": ..., "message": ..., "detail": ...}]}}.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.web.server import Request

API_VERSION_HEADER = b"Docker-Distribution-Api-Version"
API_VERSION = b"registry/2.0"


@attrs.frozen(auto_exc=True)
class RegistryError(Exception):
    """
    Something a client should be told, with the HTTP status to tell it with.

    @ivar headers: Extra response headers, such as C{WWW-Authenticate}.
    """

    status: int
    code: str
    message: str
    detail: Any = None
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        return errorBody(self.code, self.message, self.detail)


class UpstreamTimeout(Exception):
    """
    The upstream did not send response headers in time.
    """


# Why an upstream could not answer: also the values of the C{cause} label
# of the upstream error count, so keep them few and fixed.
UPSTREAM_CAUSES = ("refused", "dns", "tls", "timeout", "reset")

_CAUSE_MESSAGES = {
    "refused": "{what} at {host} could not be connected to",
    "dns": "cannot resolve the host name of {what} ({host})",
    "tls": "the TLS connection to {what} at {host} failed",
    "timeout": "{what} at {host} did not answer in time",
    "reset": "{what} at {host} closed the connection without an answer",
}


class TranslatableError(Exception):
    """
    An error raised below the server that knows what the client should be
    told: L{toRegistryError} gives the registry error to answer with.
    """

    def toRegistryError(self) -> RegistryError:
        raise NotImplementedError()


@attrs.frozen(auto_exc=True)
class UpstreamError(TranslatableError):
    """
    An upstream (registry, token service, API) could not be asked.

    @ivar cause: One of L{UPSTREAM_CAUSES}.
    @ivar host: The upstream's C{host:port}, never with credentials.
    @ivar reason: What the operating system or TLS library said, for the
        error's detail (no secrets: it never holds request data).
    @ivar what: What the upstream is, for the message; L{None} lets the
        caller name it.
    """

    cause: str
    host: str
    reason: str = ""
    what: str | None = None

    def __str__(self) -> str:
        return f"{self.cause}@{self.host}"

    def toRegistryError(self, what: str = "the upstream registry") -> RegistryError:
        message = _CAUSE_MESSAGES[self.cause].format(
            what=self.what or what, host=self.host
        )
        detail = {"upstream": self.host, "cause": self.cause}
        if self.reason:
            detail["reason"] = self.reason
        return unavailable(
            message, status=504 if self.cause == "timeout" else 502, detail=detail
        )


def errorBody(code: str, message: str, detail: Any = None) -> bytes:
    entry: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode("utf-8") + b"\n"


def unavailable(message: str, status: int = 502, detail: Any = None) -> RegistryError:
    """
    The upstream (or an API we need) could not give an answer.
    """
    return RegistryError(status, "UNAVAILABLE", message, detail)


def notFound(message: str = "no such resource") -> RegistryError:
    return RegistryError(404, "NOT_FOUND", message)


def writeError(request: Request, error: RegistryError) -> None:
    """
    Answer C{request} with C{error} and finish it, unless the response has
    already started, in which case the connection is dropped so that the
    client sees a truncated response rather than a wrong one.
    """
    if getattr(request, "_disconnected", False) or request.finished:
        return
    if request.startedWriting:
        request.loseConnection()
        return
    body = error.body()
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(
        b"Content-Type", [b"application/json; charset=utf-8"]
    )
    for name, value in error.headers:
        request.responseHeaders.addRawHeader(name, value)
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)
    request.finish()


def methodNotAllowed(request: Request, allowed: tuple[bytes, ...]) -> None:
    """
    Answer a method a resource does not take with a registry-format 405,
    instead of twisted.web's HTML page.
    """
    writeError(
        request,
        RegistryError(
            405,
            "UNSUPPORTED",
            f"use {' or '.join(m.decode() for m in allowed)} here",
            None,
            ((b"Allow", b", ".join(allowed)),),
        ),
    )
