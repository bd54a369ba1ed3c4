"""
Tests for L{regproxy.server.errors}: what a client reads when regproxy answers with
an error, seen on the wire.
"""

import json
from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from regproxy.server.errors import (
    RegistryError,
    errorBody,
    notFound,
    unavailable,
    writeError,
)

_examples = settings(max_examples=200, deadline=None)

_jsonValues = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**53), max_value=2**53),
        st.text(),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)


class _Answer(Resource):
    """
    Answers every request by calling C{respond} with it.
    """

    isLeaf = True

    def __init__(self, respond: Callable[[Request], None]) -> None:
        super().__init__()
        self.respond = respond
        self.requests: list[Request] = []

    def render(self, request: Request) -> Any:
        self.requests.append(request)
        self.respond(request)
        return NOT_DONE_YET


class Response:
    """
    A parsed HTTP/1.1 response with a Content-Length.
    """

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        statusLine, *lines = head.split(b"\r\n")
        self.code = int(statusLine.split(b" ")[1])
        self.headers: list[tuple[bytes, bytes]] = []
        for line in lines:
            name, _, value = line.partition(b":")
            self.headers.append((name.strip().lower(), value.strip()))

    def header(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name.lower()]


def serve(
    respond: Callable[[Request], None], method: bytes = b"GET"
) -> tuple[StringTransport, _Answer]:
    """
    Send one request through a real L{Site} over a L{StringTransport}.
    """
    resource = _Answer(respond)
    # A Clock, so the channel's idle timeout is not left on the reactor.
    site = Site(resource, reactor=Clock())
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        method + b" /v2/org/app/manifests/latest HTTP/1.1\r\nHost: proxy.local\r\n\r\n"
    )
    return transport, resource


class WriteErrorTests(SynchronousTestCase):
    """
    L{writeError} before and after a response has started.
    """

    def test_response(self) -> None:
        """
        The client sees the error's status, a JSON content type, a body of
        the registry's shape with the right length, and the error's extra
        headers, repeated ones included.
        """
        error = RegistryError(
            401,
            "UNAUTHORIZED",
            "authentication required",
            [{"Type": "repository", "Name": "org/app", "Action": "pull"}],
            (
                (b"WWW-Authenticate", b'Bearer realm="http://proxy.local/token"'),
                (b"WWW-Authenticate", b'Basic realm="proxy"'),
            ),
        )
        transport, _ = serve(lambda request: writeError(request, error))
        response = Response(transport.value())
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.header(b"content-type"), [b"application/json; charset=utf-8"]
        )
        self.assertEqual(
            response.header(b"content-length"), [b"%d" % (len(response.body),)]
        )
        self.assertEqual(
            json.loads(response.body),
            {
                "errors": [
                    {
                        "code": "UNAUTHORIZED",
                        "message": "authentication required",
                        "detail": [
                            {"Type": "repository", "Name": "org/app", "Action": "pull"}
                        ],
                    }
                ]
            },
        )
        self.assertEqual(
            response.header(b"www-authenticate"),
            [b'Bearer realm="http://proxy.local/token"', b'Basic realm="proxy"'],
        )
        self.assertFalse(transport.disconnecting)

    def test_noDetail(self) -> None:
        """
        An error without a detail has no C{detail} key.
        """
        transport, _ = serve(lambda request: writeError(request, notFound()))
        response = Response(transport.value())
        self.assertEqual(response.code, 404)
        self.assertEqual(
            json.loads(response.body),
            {"errors": [{"code": "NOT_FOUND", "message": "no such resource"}]},
        )

    def test_unavailable(self) -> None:
        """
        An unreachable upstream is a 502 UNAVAILABLE; a timeout can say 504.
        """
        transport, _ = serve(
            lambda request: writeError(request, unavailable("upstream unreachable"))
        )
        response = Response(transport.value())
        self.assertEqual(response.code, 502)
        self.assertEqual(json.loads(response.body)["errors"][0]["code"], "UNAVAILABLE")

        transport, _ = serve(
            lambda request: writeError(
                request, unavailable("upstream timed out", 504, {"after": 60})
            )
        )
        response = Response(transport.value())
        self.assertEqual(response.code, 504)
        self.assertEqual(
            json.loads(response.body),
            {
                "errors": [
                    {
                        "code": "UNAVAILABLE",
                        "message": "upstream timed out",
                        "detail": {"after": 60},
                    }
                ]
            },
        )

    def test_head(self) -> None:
        """
        A HEAD request gets the status and headers, with the length of the
        body it would have had, and no body.
        """
        transport, _ = serve(
            lambda request: writeError(request, notFound("no such manifest")),
            b"HEAD",
        )
        response = Response(transport.value())
        self.assertEqual(response.code, 404)
        self.assertEqual(response.body, b"")
        self.assertEqual(
            response.header(b"content-length"),
            [b"%d" % (len(errorBody("NOT_FOUND", "no such manifest")),)],
        )

    def test_afterResponseStarted(self) -> None:
        """
        Once part of a response is out, the connection is dropped instead:
        the client sees a truncated response, not an error glued to it.
        """

        def respond(request: Request) -> None:
            request.setHeader(b"content-length", b"1000")
            request.write(b"partial layer bytes")
            writeError(request, unavailable("upstream went away"))

        transport, _ = serve(respond)
        response = Response(transport.value())
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"partial layer bytes")
        self.assertNotIn(b"UNAVAILABLE", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_afterFinish(self) -> None:
        """
        An error after the response finished changes nothing.
        """

        def respond(request: Request) -> None:
            request.write(b"done")
            request.finish()
            writeError(request, unavailable("late"))

        transport, _ = serve(respond)
        self.assertNotIn(b"UNAVAILABLE", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_afterClientLeft(self) -> None:
        """
        An error for a client that has gone writes nothing and raises
        nothing.
        """
        held: list[Request] = []
        transport, _ = serve(held.append)
        [request] = held
        request.channel.connectionLost(Failure(ConnectionError("client left")))
        before = transport.value()
        writeError(request, unavailable("upstream unreachable"))
        self.assertEqual(transport.value(), before)


class ErrorBodyTests(SynchronousTestCase):
    """
    L{errorBody} and L{RegistryError.body}.
    """

    def test_body(self) -> None:
        """
        The body is the distribution spec's error list, one JSON line.
        """
        body = RegistryError(400, "NAME_INVALID", "invalid name", "org//app").body()
        self.assertTrue(body.endswith(b"\n"))
        self.assertNotIn(b"\n", body[:-1])
        self.assertEqual(
            json.loads(body),
            {
                "errors": [
                    {
                        "code": "NAME_INVALID",
                        "message": "invalid name",
                        "detail": "org//app",
                    }
                ]
            },
        )

    @_examples
    @given(
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=20),
        st.text(),
        _jsonValues,
    )
    def test_anyMessage(self, code: str, message: str, detail: Any) -> None:
        """
        Any message and detail read back from the body as given.
        """
        body = errorBody(code, message, detail)
        expected: dict[str, Any] = {"code": code, "message": message}
        if detail is not None:
            expected["detail"] = detail
        self.assertEqual(json.loads(body), {"errors": [expected]})
