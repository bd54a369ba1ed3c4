# -*- test-case-name: tests.unit.test_metrics -*-
"""
Upstream metrics, measured where every upstream request passes: the
L{IAgent}.  Counted once per request when its response headers arrive (or
it fails), never per body chunk.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from regproxy.metrics import Metrics
from regproxy.proxy.failures import classifyFailure, isCancellation


def upstreamErrorCause(failure: Failure) -> str | None:
    """
    The C{cause} label for a failed upstream request (the words of
    L{regproxy.proxy.failures}), C{other} for anything else; L{None} when
    it was cancelled (the client went away, or the response timeout, which
    L{regproxy.proxy.relay.Forwarder} counts itself).
    """
    found = classifyFailure(failure)
    if found is not None:
        return found[0]
    return None if isCancellation(failure) else "other"


@implementer(IAgent)
@attrs.frozen
class MeasuredAgent:
    """
    An L{IAgent} that counts what it sends: responses by status, failures
    by cause, and the time to response headers.
    """

    agent: IAgent
    metrics: Metrics
    clock: IReactorTime

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        started = self.clock.seconds()
        sending = self.agent.request(method, uri, headers, bodyProducer)

        def answered(response: IResponse) -> IResponse:
            self.metrics.upstreamDuration.observe(self.clock.seconds() - started)
            self.metrics.upstreamRequests.labels(str(response.code)).inc()
            return response

        def failed(failure: Failure) -> Failure:
            cause = upstreamErrorCause(failure)
            if cause is not None:
                self.metrics.upstreamErrors.labels(cause).inc()
            return failure

        return sending.addCallbacks(answered, failed)
