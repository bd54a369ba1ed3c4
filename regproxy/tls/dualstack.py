# -*- test-case-name: tests.integration.test_tls_listener -*-
"""
Listening on every IPv4 and IPv6 address at once, as the default
listeners do: the TLS certificate names C{::1} and the host's IPv6
addresses, so the ports must answer there too.

One IPv6 socket on C{::} also takes IPv4 connections where the system
allows it (Linux unless C{net.ipv6.bindv6only} is set); elsewhere it takes
IPv6 only, and a second socket on C{0.0.0.0} with the same port number takes
IPv4.  Which of the two happened is read back from the socket, not guessed.
A machine without IPv6 gets the IPv4 socket alone.

C{regproxy-tcp:PORT[:backlog=N]} is plain TCP on both families, the default
plain listener; C{regproxy-tls:PORT} with no C{interface} uses the same.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet import interfaces
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

#: What binding C{::} fails with when this machine has no IPv6.
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def _takesIPv4(port: Any) -> bool:
    sock = getattr(port, "socket", None)
    if sock is None:
        return False  # Not a real socket (a test reactor): listen on both.
    try:
        return sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    except OSError:
        return False


@implementer(interfaces.IListeningPort)
class DualStackPort:
    """
    The one or two ports listening; C{getHost} is the first one's.
    """

    def __init__(self, ports: list[Any]) -> None:
        self.ports = ports

    def getHost(self) -> Any:
        return self.ports[0].getHost()

    def startListening(self) -> None:
        for port in self.ports:
            port.startListening()

    def stopListening(self) -> Deferred:
        return gatherResults([maybeDeferred(port.stopListening) for port in self.ports])


@implementer(interfaces.IStreamServerEndpoint)
class DualStackServerEndpoint:
    """
    TCP on every address of both families, on one port number.
    """

    _log = Logger()

    def __init__(self, reactor: Any, port: int, backlog: int = 50) -> None:
        self._reactor = reactor
        self._port = port
        self._backlog = backlog

    def listen(self, protocolFactory: interfaces.IProtocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._listen(protocolFactory))

    async def _listen(self, protocolFactory: interfaces.IProtocolFactory) -> Any:
        v6 = TCP6ServerEndpoint(self._reactor, self._port, self._backlog, "::")
        try:
            first = await v6.listen(protocolFactory)
        except CannotListenError as e:
            if getattr(e.socketError, "errno", None) not in _NO_IPV6:
                raise
            self._log.info(
                "port {port}: no IPv6 here ({reason}); IPv4 only",
                port=self._port,
                reason=e.socketError,
            )
            v4 = TCP4ServerEndpoint(self._reactor, self._port, self._backlog, "")
            return DualStackPort([await v4.listen(protocolFactory)])
        if _takesIPv4(first):
            return DualStackPort([first])
        number = first.getHost().port
        v4 = TCP4ServerEndpoint(self._reactor, number, self._backlog, "")
        try:
            second = await v4.listen(protocolFactory)
        except BaseException:
            await maybeDeferred(first.stopListening)
            raise
        return DualStackPort([first, second])


PLAIN_PREFIX = "regproxy-tcp"


def _number(text: Any, what: str, low: int) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        raise ValueError(f"{PLAIN_PREFIX}: {what} must be a number, got {text!r}")
    if not low <= int(text) <= 65535:
        raise ValueError(f"{PLAIN_PREFIX}: {what} must be {low} to 65535, got {text}")
    return int(text)


@implementer(IPlugin, interfaces.IStreamServerEndpointStringParser)
class PlainEndpointParser:
    """
    C{regproxy-tcp:PORT[:backlog=N]}, found by Twisted's plugin system
    through C{twisted/plugins/regproxy_endpoints.py}.
    """

    prefix = PLAIN_PREFIX

    def parseStreamServer(
        self, reactor: Any, *args: Any, **kwargs: Any
    ) -> DualStackServerEndpoint:
        unknown = sorted(set(kwargs) - {"port", "backlog"})
        if unknown:
            raise ValueError(
                f"{PLAIN_PREFIX}: unknown argument {unknown[0]!r} (known: port, "
                "backlog; for one address use tcp: or tcp6: with interface=)"
            )
        ports = list(args) + ([kwargs["port"]] if "port" in kwargs else [])
        if len(ports) != 1:
            raise ValueError(
                f"{PLAIN_PREFIX}: one port is needed, e.g. {PLAIN_PREFIX}:80"
            )
        backlog = (
            _number(kwargs["backlog"], "backlog", 1) if "backlog" in kwargs else 50
        )
        return DualStackServerEndpoint(reactor, _number(ports[0], "port", 0), backlog)
