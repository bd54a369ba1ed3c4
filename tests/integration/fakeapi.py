# -*- test-case-name: tests.integration.test_fleets -*-
"""
Serve a L{regproxy.testing.fakebalena.FakeBalenaAPI} on a loopback port, so
that child processes (skopeo, podman) and the registry's clients can reach
it as they would reach C{api.balena-cloud.com}.

A L{Gate} in front of the fake can hold requests until the test lets them
through, so a test can have many clients waiting on one API call.

Every answer closes its connection: a client's pool then never holds an
idle connection (and its idle timer) to the fake when the test ends, which
trial would report as a dirty reactor.  Cleanup waits for the connections
still open to close before the port stops listening.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from regproxy.testing.fakebalena import FakeBalenaAPI

from .loopback import serveOnLoopback


class _ClosingChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that answers one request per connection, saying
    so with C{Connection: close}.
    """

    def checkPersistence(self, request, version) -> bool:
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False


class Gate(Resource):
    """
    Pass requests to a resource, or, while closed, hold them until
    L{Gate.open}.
    """

    isLeaf = True

    def __init__(self, resource: Resource) -> None:
        super().__init__()
        self._resource = resource
        self._closed = False
        self._held: list = []
        self._waiting: list[Deferred[None]] = []

    def close(self) -> None:
        self._closed = True

    def open(self) -> None:
        """
        Let every held request through, and the next ones.
        """
        self._closed = False
        held, self._held = self._held, []
        for request in held:
            if not request.finished and request.channel is not None:
                self._pass(request)

    def whenHolding(self) -> Deferred[None]:
        """
        Fire once a request is held.
        """
        if self._held:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def render(self, request):
        if not self._closed:
            return self._resource.render(request)
        self._held.append(request)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        return NOT_DONE_YET

    def _pass(self, request) -> None:
        body = self._resource.render(request)
        if body is not NOT_DONE_YET:
            request.write(body)
            request.finish()


@attrs.frozen
class ServedAPI:
    """
    A fake balena API listening on loopback.

    @ivar url: Its base URL, C{http://127.0.0.1:PORT}; what regproxy's
        C{balena_api} setting takes.
    @ivar tokenRealm: Its registry token endpoint, C{URL/auth/v1/token}: the
        C{auth.token.realm} of a registry that trusts its tokens.
    """

    url: str
    port: int
    api: FakeBalenaAPI
    gate: Gate

    @property
    def tokenRealm(self) -> str:
        return self.url + "/auth/v1/token"


def serveFakeAPI(testCase, api: FakeBalenaAPI, reactor=None) -> ServedAPI:
    """
    Listen on a free loopback port until C{testCase} ends.
    """
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    gate = Gate(api)
    site = Site(gate, reactor=reactor)
    site.protocol = _ClosingChannel  # type: ignore[method-assign,assignment]
    site.noisy = False

    def endHanging() -> None:
        # Requests left hanging (api.stop("hang")) never finish by
        # themselves: end them, then wait for every connection to close.
        for request in api.hanging + gate._held:
            request.transport.abortConnection()
        del api.hanging[:], gate._held[:]

    number = serveOnLoopback(testCase, site, reactor, beforeWait=endHanging)
    return ServedAPI(f"http://127.0.0.1:{number}", number, api, gate)
