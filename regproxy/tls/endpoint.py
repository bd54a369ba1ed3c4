# -*- test-case-name: tests.unit.test_endpoint -*-
"""
The C{regproxy-tls} server endpoint, so that TLS fits the same C{--listen}
flag (and C{strports.service}) as C{tcp:80}::

    regproxy-tls:PORT[:interface=ADDR][:backlog=N]
                [:cert=PATH[:key=PATH][:chain=PATH]][:certs=DIR]
                [:stateDir=DIR][:name=NAME,NAME...]

It wraps an inner TCP endpoint (as txsni does): with no C{interface} that
is every IPv4 and IPv6 address (L{regproxy.tls.dualstack}), otherwise the
one address given.

With no C{cert}, the server certificate is signed by a local CA kept in
C{stateDir/tls/} (see L{regproxy.tls.localca}) and renewed while running
when the names change; C{name} adds subject alternative names.  With
C{cert} (and C{key}, C{chain}), those files are checked at start and re-read
whenever they change.  C{certs} names a directory of PEM bundles (key,
certificate, chain in one file) chosen by the SNI server name; a client that
sends no name, or one no bundle covers, gets the C{cert} certificate, or the
local CA's.

C{stateDir} and C{name} default to the daemon's C{--state-dir} and
C{--tls-name}, handed over as a L{TLSDefaults} by L{serverEndpoint}; found
by Twisted's plugin system alone, the endpoint uses the default state
directory and no extra names.  A colon inside a value (an IPv6 address, a
Windows path) is written C{\\:}, as in every Twisted endpoint description.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    _parse,
    quoteStringArgument,
    serverFromString,
)
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from regproxy.tls.context import CertificateFiles, ReloadingServerContext
from regproxy.tls.describe import clientSetup
from regproxy.tls.dualstack import (
    PLAIN_PREFIX,
    DualStackServerEndpoint,
    PlainEndpointParser,
)
from regproxy.tls.hostnames import SubjectNames, hostsFor, localNames, parseName
from regproxy.tls.pem import CertificateError
from regproxy.tls.renewal import RenewingServerContext

PREFIX = "regproxy-tls"
_KNOWN = (
    "port",
    "interface",
    "backlog",
    "cert",
    "key",
    "chain",
    "certs",
    "stateDir",
    "name",
)


class EndpointError(ValueError):
    """
    A C{regproxy-tls} description cannot be used; one line saying why.
    """


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise EndpointError(
            f"{PREFIX}: port must be a number from 0 to 65535, got {text!r}"
        )
    return int(text)


def _backlog(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 65535:
        raise EndpointError(
            f"{PREFIX}: backlog must be a positive number, got {text!r}"
        )
    return int(text)


def _interface(text: str) -> str:
    import ipaddress

    if text == "":
        return text
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise EndpointError(
            f"{PREFIX}: interface must be an IP address, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.replace(",", " ").split() if n)
    for n in names:
        try:
            parseName(n)
        except CertificateError as e:
            raise EndpointError(f"{PREFIX}: name={e}") from None
    return names


def _path(key: str, text: str) -> str:
    if not text or "\x00" in text:
        raise EndpointError(f"{PREFIX}: {key}= needs a file path")
    return text


@attrs.frozen
class TLSListenerSpec:
    """
    A parsed C{regproxy-tls} description.  C{stateDir} L{None} and C{names}
    L{None} mean "take the daemon's setting".
    """

    port: int
    interface: str = ""
    backlog: int = 50
    cert: str | None = None
    key: str | None = None
    chain: str | None = None
    certs: str | None = None
    stateDir: str | None = None
    names: tuple[str, ...] | None = None

    def describe(self) -> str:
        """
        The description that parses back to this value.
        """
        parts = [PREFIX, str(self.port)]
        if self.interface:
            parts.append("interface=" + quoteStringArgument(self.interface))
        if self.backlog != 50:
            parts.append(f"backlog={self.backlog}")
        for key in ("cert", "key", "chain", "certs", "stateDir"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key}={quoteStringArgument(value)}")
        if self.names is not None:
            parts.append("name=" + quoteStringArgument(",".join(self.names)))
        return ":".join(parts)


def parseArguments(args: Iterable[Any], kwargs: Mapping[str, Any]) -> TLSListenerSpec:
    """
    Check the arguments Twisted split out of a C{regproxy-tls} description.

    @raise EndpointError: With a one-line reason, for anything unusable.
    """
    args = list(args)
    for key, value in kwargs.items():
        if key not in _KNOWN:
            raise EndpointError(
                f"{PREFIX}: unknown argument {key!r} (known: {', '.join(_KNOWN)})"
            )
        if not isinstance(value, str):
            raise EndpointError(f"{PREFIX}: {key}= must be text")
    if any(not isinstance(a, str) for a in args):
        raise EndpointError(f"{PREFIX}: arguments must be text")
    if len(args) > 1 or (args and "port" in kwargs):
        raise EndpointError(
            f"{PREFIX}: one port only, then key=value arguments; "
            f"got {':'.join(args)!r} (is a ':' in a value not written '\\:'?)"
        )
    if not args and "port" not in kwargs:
        raise EndpointError(f"{PREFIX}: a port is needed, e.g. {PREFIX}:5000")
    fields: dict[str, Any] = {"port": _port(args[0] if args else kwargs["port"])}
    if "interface" in kwargs:
        fields["interface"] = _interface(kwargs["interface"])
    if "backlog" in kwargs:
        fields["backlog"] = _backlog(kwargs["backlog"])
    for key in ("cert", "key", "chain", "certs", "stateDir"):
        if key in kwargs:
            fields[key] = _path(key, kwargs[key])
    if "name" in kwargs:
        fields["names"] = _names(kwargs["name"])
    if ("key" in fields or "chain" in fields) and "cert" not in fields:
        raise EndpointError(f"{PREFIX}: key= and chain= need cert=")
    return TLSListenerSpec(**fields)


def _nameTuple(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(names)


@attrs.frozen
class TLSDefaults:
    """
    The daemon's settings a C{regproxy-tls} listener uses unless its
    description names its own.

    @ivar stateDir: Where the local CA lives (C{--state-dir}).
    @ivar names: Extra names for its server certificate (C{--tls-name}).
    """

    stateDir: str
    names: tuple[str, ...] = attrs.field(default=(), converter=_nameTuple)

    @classmethod
    def standalone(cls) -> TLSDefaults:
        """
        For a listener made without the daemon (C{twistd web --listen
        regproxy-tls:...}): the default state directory, no extra names.
        """
        from regproxy.config import defaultStateDir

        return cls(defaultStateDir())


def innerEndpoint(reactor: Any, spec: TLSListenerSpec) -> Any:
    """
    The TCP endpoint under the TLS: every address of both families when no
    interface is given, else that one.
    """
    if spec.interface == "":
        return DualStackServerEndpoint(reactor, spec.port, spec.backlog)
    endpointType = TCP6ServerEndpoint if ":" in spec.interface else TCP4ServerEndpoint
    return endpointType(reactor, spec.port, spec.backlog, spec.interface)


Creator = ReloadingServerContext | RenewingServerContext


@implementer(interfaces.IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Wraps the connections of an inner stream endpoint in TLS made by a
    L{ReloadingServerContext} (given certificates) or a
    L{RenewingServerContext} (the local CA's).  On listening it logs the
    certificate and what clients must do to trust it.
    """

    _log = Logger()

    def __init__(
        self,
        inner: interfaces.IStreamServerEndpoint,
        creator: Creator,
        spec: TLSListenerSpec,
    ) -> None:
        self.inner = inner
        self.creator = creator
        self.spec = spec

    def reload(self) -> bool:
        """
        Re-read given certificate files, and check that the local CA's
        server certificate still fits this machine's names and is not near
        its expiry (issuing a new one if not): what C{SIGHUP} does.

        @return: C{True} when other certificates are served from now on.
        @raise CertificateError: They cannot be used (a L{ValueError});
            the current ones stay in use.
        """
        return self.creator.reload()

    def listen(self, protocolFactory: interfaces.IProtocolFactory) -> Deferred:
        wrapped = TLSMemoryBIOFactory(self.creator, False, protocolFactory)
        d = self.inner.listen(wrapped)
        d.addCallback(self._announce)
        return d

    def _announce(self, port: Any) -> Any:
        number = port.getHost().port
        certificate = self.creator.certificates.default
        names = ", ".join(certificate.names.describe())
        if not isinstance(self.creator, RenewingServerContext):
            self._log.info(
                "TLS on port {port}: certificate {path}, SHA-256 {fingerprint}, "
                "names {names}, expires {expires}",
                port=number,
                path=self.spec.cert,
                fingerprint=certificate.fingerprint,
                names=names,
                expires=f"{certificate.notAfter:%Y-%m-%d}",
            )
            return port
        local = self.creator.localCA
        hosts = list(hostsFor(certificate.names)) or ["127.0.0.1"]
        self._log.info(
            "TLS on port {port}: server certificate for {names}, expires "
            "{expires}, signed by the local CA {path} ({how}), SHA-256 "
            "{fingerprint}.\nClients must trust that CA, e.g. for {host}:{port}:"
            "\n{setup}\n(for another name: regproxy cert client-setup HOST:{port})",
            port=number,
            names=names,
            expires=f"{certificate.notAfter:%Y-%m-%d}",
            path=local.paths.ca,
            how=f"made now: {local.newCA}" if local.newCA else "kept",
            fingerprint=local.ca.fingerprint,
            host=hosts[0],
            setup=clientSetup(hosts[0], number, local.ca.fingerprint),
        )
        return port


def makeEndpoint(
    reactor: Any,
    spec: TLSListenerSpec,
    defaults: TLSDefaults,
    names: Callable[[Sequence[str]], SubjectNames] = localNames,
) -> TLSServerEndpoint:
    """
    Check or make the certificates now, so a bad file stops start-up with
    one clear line instead of failing each handshake later.

    @param names: This machine's names, with the given extra ones.
    @raise EndpointError: When the certificates cannot be used.
    """
    stateDir = defaults.stateDir if spec.stateDir is None else spec.stateDir
    extra = defaults.names if spec.names is None else spec.names
    creator: Creator
    try:
        if spec.cert is None:
            creator = RenewingServerContext(
                stateDir, lambda: names(extra), reactor, spec.certs
            )
        else:
            creator = ReloadingServerContext(
                CertificateFiles(spec.cert, spec.key, spec.chain, spec.certs)
            )
    except CertificateError as e:
        raise EndpointError(f"{PREFIX}:{spec.port}: {e}") from None
    return TLSServerEndpoint(innerEndpoint(reactor, spec), creator, spec)


def serverEndpoint(
    reactor: Any, description: str, defaults: TLSDefaults
) -> interfaces.IStreamServerEndpoint:
    """
    C{serverFromString}, except that a C{regproxy-tls} listener gets the
    daemon's settings as values rather than through the environment, and
    that C{regproxy-tcp} and C{regproxy-tls} need no plugin lookup.

    @raise ValueError: The description cannot be used (an L{EndpointError}
        for ours).
    """
    try:
        args, kwargs = _parse(description)
    except RuntimeError:  # Twisted's tokenizer, on a final backslash
        raise ValueError(
            f"{description!r} ends in a '\\' that escapes nothing"
        ) from None
    if args and args[0] == PREFIX:
        return makeEndpoint(reactor, parseArguments(args[1:], kwargs), defaults)
    if args and args[0] == PLAIN_PREFIX:
        # Ours too: found without the plugin system, so an older copy of
        # the plugin file installed elsewhere cannot hide it.
        return PlainEndpointParser().parseStreamServer(reactor, *args[1:], **kwargs)
    return serverFromString(reactor, description)


@implementer(IPlugin, interfaces.IStreamServerEndpointStringParser)
class TLSEndpointParser:
    """
    Found by Twisted's plugin system through
    C{twisted/plugins/regproxy_endpoints.py}.
    """

    prefix = PREFIX

    def parseStreamServer(
        self, reactor: Any, *args: Any, **kwargs: Any
    ) -> TLSServerEndpoint:
        return makeEndpoint(
            reactor, parseArguments(args, kwargs), TLSDefaults.standalone()
        )
