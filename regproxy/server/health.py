# -*- test-case-name: tests.unit.test_health -*-
"""
C{/_health} and C{/_ready}.

C{/_health} is liveness: the process answers HTTP.  C{/_ready} says whether
requests can be served now: the upstream answers its C{/v2/} (any status
below 500, a 401 included, means it is there), or the LAN cache can serve
without it.  The upstream is asked at most once every few seconds, however
often C{/_ready} is polled, and never because of a client's request.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from regproxy.server.errors import methodNotAllowed


@attrs.frozen
class Reachability:
    """
    What the last look at the upstream found.
    """

    reachable: bool
    reason: str


@attrs.define
class UpstreamProbe:
    """
    Asks the upstream's C{/v2/} with a short timeout and remembers the
    answer for C{maxAge} seconds; callers during a probe share it.

    @ivar url: The upstream's C{/v2/} URL.
    """

    agent: IAgent
    url: bytes
    clock: IReactorTime
    timeout: float = 3.0
    maxAge: float = 5.0
    _last: Reachability | None = None
    _checkedAt: float = 0.0
    _waiting: list[Deferred[Reachability]] | None = None

    def check(self) -> Deferred[Reachability]:
        """
        The upstream's reachability, at most C{maxAge} seconds old.
        """
        now = self.clock.seconds()
        if self._last is not None and now - self._checkedAt < self.maxAge:
            return succeed(self._last)
        waiter: Deferred[Reachability] = Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
            return waiter
        self._waiting = [waiter]
        probe = Deferred.fromCoroutine(self._probe())
        probe.addTimeout(self.timeout, self.clock)
        probe.addErrback(
            lambda f: Reachability(False, f"no answer: {_describe(f.value)}")
        )
        probe.addCallback(self._settle)
        return waiter

    async def _probe(self) -> Reachability:
        response = await self.agent.request(b"GET", self.url, Headers(), None)
        await readBody(response)
        if response.code >= 500:
            return Reachability(False, f"the upstream answered {response.code}")
        return Reachability(True, f"the upstream answered {response.code}")

    def _settle(self, result: Reachability) -> None:
        self._last = result
        self._checkedAt = self.clock.seconds()
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(result)


def _describe(error: BaseException) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(type(r.value).__name__ for r in reasons)
    if type(error).__name__ in ("TimeoutError", "CancelledError"):
        return "timed out"
    return type(error).__name__


class ReadyResource(Resource):
    """
    C{/_ready}: 200 when requests can be served now, 503 when they cannot,
    with the reason in JSON either way.

    @param cacheCanServe: Whether the LAN cache can answer without the
        upstream; L{None} without a cache.
    """

    isLeaf = True

    def __init__(
        self, probe: UpstreamProbe, cacheCanServe: Callable[[], bool] | None = None
    ) -> None:
        super().__init__()
        self._probe = probe
        self._cacheCanServe = cacheCanServe

    def render(self, request: Request) -> object:
        if request.method not in (b"GET", b"HEAD"):
            methodNotAllowed(request, (b"GET",))
            return NOT_DONE_YET
        self._probe.check().addCallback(self._answer, request)
        return NOT_DONE_YET

    def _answer(self, upstream: Reachability, request: Request) -> None:
        if getattr(request, "_disconnected", False):
            return
        ready = upstream.reachable
        reason = upstream.reason
        if not ready and self._cacheCanServe is not None and self._cacheCanServe():
            ready, reason = True, f"{reason}; the cache can serve"
        body = {
            "status": "ready" if ready else "unavailable",
            "reason": reason,
            "upstream": {"reachable": upstream.reachable, "reason": upstream.reason},
        }
        data = json.dumps(body).encode("utf-8") + b"\n"
        request.setResponseCode(200 if ready else 503)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % (len(data),))
        request.write(data)
        request.finish()
