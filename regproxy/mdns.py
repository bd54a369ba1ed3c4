# -*- test-case-name: tests.unit.test_mdns -*-
"""
C{--mdns NAME}: advertise C{NAME.local} (A and AAAA records) and the
registry's C{_http._tcp} / C{_https._tcp} services on the LAN, so devices
can pull from C{NAME.local:5000} with no DNS set up.

The zeroconf library runs its own thread and blocks while it probes for
name conflicts, so L{MDNSService} does its start and stop in a worker
thread and never blocks the reactor.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

#: Endpoint types whose ports speak HTTP, and HTTPS.
PLAIN_TYPES = ("tcp", "tcp6", "regproxy-tcp")
TLS_TYPES = ("regproxy-tls", "ssl")


def hostLabel(name: str) -> str:
    """
    The single DNS label to advertise: C{box}, C{box.local} and C{box.local.}
    all mean C{box.local}.

    @raise ValueError: When it is not a usable label.
    """
    label = name.strip().rstrip(".")
    if label.lower().endswith(".local"):
        label = label[: -len(".local")]
    if not (
        0 < len(label) <= 63
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
    ):
        raise ValueError(
            f"--mdns: {name!r} is not a host name label (letters, digits and '-')"
        )
    return label


def portsFromListen(descriptions: Iterable[str]) -> tuple[list[int], list[int]]:
    """
    The plain and TLS ports in C{--listen} endpoint descriptions (port 0,
    chosen by the system, cannot be advertised and is left out).

    @return: C{(httpPorts, httpsPorts)}.
    """
    http: list[int] = []
    https: list[int] = []
    for description in descriptions:
        kind, _, rest = description.partition(":")
        port = None
        for argument in rest.split(":"):
            value = (
                argument[len("port=") :] if argument.startswith("port=") else argument
            )
            if value.isascii() and value.isdigit():
                port = int(value)
                break
        if not port or port > 65535:
            continue
        if kind in TLS_TYPES and port not in https:
            https.append(port)
        elif kind in PLAIN_TYPES and port not in http:
            http.append(port)
    return http, https


@attrs.frozen
class Advertisement:
    """
    One DNS-SD service to publish: C{instance._http._tcp.local.} on C{port}.
    """

    serviceType: str
    instance: str
    port: int


def advertisements(
    label: str, httpPorts: Sequence[int], httpsPorts: Sequence[int]
) -> list[Advertisement]:
    """
    One service per port; a second port of the same kind gets its number in
    the instance name, since instance names must be unique.
    """
    found = []
    for serviceType, ports in (
        ("_http._tcp.local.", httpPorts),
        ("_https._tcp.local.", httpsPorts),
    ):
        for index, port in enumerate(ports):
            instance = label if index == 0 else f"{label} ({port})"
            found.append(Advertisement(serviceType, instance, port))
    return found


def _packed(addresses: Iterable[str]) -> list[bytes]:
    return [ipaddress.ip_address(a).packed for a in addresses]


class MDNSService(Service):
    """
    Publishes L{advertisements} with the host name C{label.local} pointing at
    C{addresses} while running.

    @param runInThread: Runs a blocking callable off the reactor thread and
        returns a L{Deferred} of its result (tests pass a synchronous one).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        name: str,
        httpPorts: Sequence[int],
        httpsPorts: Sequence[int],
        addresses: Sequence[str] | None = None,
        interfaces: Any = None,
        zeroconfFactory: Callable[..., Any] | None = None,
        runInThread: Callable[[Callable[[], Any]], Deferred] | None = None,
    ) -> None:
        self.label = hostLabel(name)
        self.hostName = self.label + ".local."
        self._reactor = reactor
        self._ads = advertisements(self.label, httpPorts, httpsPorts)
        self._addresses = addresses
        self._interfaces = interfaces
        self._zeroconfFactory = zeroconfFactory
        self._runInThread = runInThread
        self._zeroconf: Deferred = succeed(None)

    def _inThread(self, f: Callable[[], Any]) -> Deferred:
        if self._runInThread is not None:
            return self._runInThread(f)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f)

    def _addressList(self) -> list[str]:
        if self._addresses is not None:
            return list(self._addresses)
        from regproxy.tls.hostnames import interfaceAddresses

        return [str(a) for a in interfaceAddresses()]

    def _serviceInfos(self, addresses: list[str]) -> list[Any]:
        from zeroconf import ServiceInfo

        return [
            ServiceInfo(
                ad.serviceType,
                f"{ad.instance}.{ad.serviceType}",
                addresses=_packed(addresses),
                port=ad.port,
                server=self.hostName,
                properties={"path": "/v2/"},
            )
            for ad in self._ads
        ]

    def _start(self) -> Any:
        from zeroconf import InterfaceChoice, Zeroconf

        addresses = self._addressList()
        factory = self._zeroconfFactory or Zeroconf
        interfaces = (
            self._interfaces if self._interfaces is not None else InterfaceChoice.All
        )
        zeroconf = factory(interfaces=interfaces)
        try:
            for info in self._serviceInfos(addresses):
                zeroconf.register_service(info)
        except BaseException:
            zeroconf.close()
            raise
        return zeroconf, addresses

    def startService(self) -> None:
        super().startService()

        def started(result: Any) -> Any:
            zeroconf, addresses = result
            self._log.info(
                "mDNS: advertising {host} ({addresses}) with {services}",
                host=self.hostName.rstrip("."),
                addresses=", ".join(addresses) or "no addresses",
                services=", ".join(
                    f"{ad.serviceType.split('.')[0]}:{ad.port}" for ad in self._ads
                )
                or "no services",
            )
            return zeroconf

        def failed(failure: Any) -> None:
            self._log.failure(
                "mDNS: cannot advertise {host}", failure, host=self.hostName.rstrip(".")
            )
            return None

        self._zeroconf = self._inThread(self._start).addCallbacks(started, failed)

    def stopService(self) -> Deferred:
        super().stopService()

        def stop(zeroconf: Any) -> Any:
            if zeroconf is None:
                return None

            def close() -> None:
                zeroconf.unregister_all_services()
                zeroconf.close()

            return self._inThread(close)

        d, self._zeroconf = self._zeroconf, succeed(None)
        d.addCallback(stop)
        d.addErrback(lambda f: self._log.failure("mDNS: stopping failed", f))
        return d


def fromConfig(reactor: Any, config: Any) -> MDNSService | None:
    """
    The mDNS service C{--mdns} asks for, with the ports from C{--listen};
    L{None} when C{--mdns} is not given.
    """
    if not getattr(config, "mdns", None):
        return None
    http, https = portsFromListen(config.listen)
    return MDNSService(reactor, config.mdns, http, https)
