# -*- test-case-name: tests.unit.test_endpoint -*-
"""
The C{regproxy-tls} server endpoint, so that TLS fits the same C{--listen}
flag (and C{strports.service}) as C{tcp:80}::

    regproxy-tls:PORT[:interface=ADDR][:backlog=N]
                [:cert=PATH[:key=PATH][:chain=PATH]][:certs=DIR]
                [:stateDir=DIR][:name=NAME,NAME...]

With no C{cert}, a self-signed certificate is made in C{stateDir/tls/} on
first start and kept (see L{regproxy.tls.certificates.ensureSelfSigned}); C{name} adds
subject alternative names to it.  With C{cert} (and C{key}, C{chain}), those
files are checked at start and re-read whenever they change.  C{certs} names
a directory of PEM bundles (key, certificate, chain in one file) chosen by
the SNI server name; a client that sends no name, or one no bundle covers,
gets the C{cert} certificate, or the self-signed one.

C{stateDir} and C{name} default to the daemon's own settings, read the same
way it reads them (C{REGPROXY_STATE_DIR}, C{REGPROXY_TLS_NAME}, the file in
C{REGPROXY_CONFIG}); flags given to C{twistd regproxy} reach the endpoint
through L{withConfig}.  A colon inside a value (an IPv6 address, a Windows
path) is written C{\\:}, as in every Twisted endpoint description.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    quoteStringArgument,
)
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from regproxy.tls.certificates import (
    CertificateError,
    SelfSignedPaths,
    clientSetup,
    ensureSelfSigned,
    hostsFor,
    localNames,
    parseName,
)
from regproxy.tls.context import CertificateFiles, ReloadingServerContext

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


def withConfig(description: str, config: Any) -> str:
    """
    Give a C{regproxy-tls} description the daemon's C{--state-dir} and
    C{--tls-name} unless it names its own; other descriptions are returned
    unchanged.

    @param config: A L{regproxy.config.Config}.
    """
    if description.split(":", 1)[0] != PREFIX:
        return description
    arguments = description.split(":")
    extra = []
    if not any(a.startswith("stateDir=") for a in arguments):
        extra.append("stateDir=" + quoteStringArgument(config.state_dir))
    if not any(a.startswith("name=") for a in arguments):
        names = getattr(config, "tls_name", ())
        extra.append("name=" + quoteStringArgument(",".join(names)))
    return ":".join([description, *extra])


def _daemonSettings(environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    from regproxy.config import ConfigError, loadConfig

    try:
        config = loadConfig({}, environ)
    except ConfigError as e:
        raise EndpointError(f"{PREFIX}: {e}") from None
    return config.state_dir, tuple(getattr(config, "tls_name", ()))


@implementer(interfaces.IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    A TCP endpoint whose connections are wrapped in TLS by a
    L{ReloadingServerContext}.  On listening it logs the certificate and
    what clients must do to trust it.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        spec: TLSListenerSpec,
        creator: ReloadingServerContext,
        selfSigned: tuple[SelfSignedPaths, str | None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.spec = spec
        self.creator = creator
        self._selfSigned = selfSigned
        endpointType = (
            TCP6ServerEndpoint if ":" in spec.interface else TCP4ServerEndpoint
        )
        self._tcp = endpointType(reactor, spec.port, spec.backlog, spec.interface)

    def listen(self, protocolFactory: interfaces.IProtocolFactory) -> Deferred:
        wrapped = TLSMemoryBIOFactory(self.creator, False, protocolFactory)
        d = self._tcp.listen(wrapped)
        d.addCallback(self._announce)
        return d

    def _announce(self, port: Any) -> Any:
        number = port.getHost().port
        certificate = self.creator.certificates.default
        names = certificate.names
        if self._selfSigned is None:
            self._log.info(
                "TLS on port {port}: certificate {path}, SHA-256 {fingerprint}, "
                "names {names}, expires {expires}",
                port=number,
                path=self.spec.cert,
                fingerprint=certificate.fingerprint,
                names=", ".join(names.describe()),
                expires=f"{certificate.notAfter:%Y-%m-%d}",
            )
            return port
        paths, made = self._selfSigned
        hosts = list(hostsFor(names)) or ["127.0.0.1"]
        self._log.info(
            "TLS on port {port}: self-signed certificate {path} ({how}), "
            "SHA-256 {fingerprint}, names {names}, expires {expires}.\n"
            "Clients must trust it as a CA, e.g. for {host}:{port}:\n{setup}\n"
            "(for another name: regproxy cert client-setup HOST:{port})",
            port=number,
            path=paths.certificate,
            how=f"made now: {made}" if made else "kept from an earlier start",
            fingerprint=certificate.fingerprint,
            names=", ".join(names.describe()),
            expires=f"{certificate.notAfter:%Y-%m-%d}",
            host=hosts[0],
            setup=clientSetup(hosts[0], number, certificate.fingerprint),
        )
        return port


def makeEndpoint(
    reactor: Any, spec: TLSListenerSpec, environ: Mapping[str, str] | None = None
) -> TLSServerEndpoint:
    """
    Check or make the certificates now, so a bad file stops start-up with
    one clear line instead of failing each handshake later.

    @raise EndpointError: When the certificates cannot be used.
    """
    stateDir, names = spec.stateDir, spec.names
    if spec.cert is None and (stateDir is None or names is None):
        daemonStateDir, daemonNames = _daemonSettings(
            os.environ if environ is None else environ
        )
        stateDir = daemonStateDir if stateDir is None else stateDir
        names = daemonNames if names is None else names
    selfSigned = None
    try:
        if spec.cert is None:
            assert stateDir is not None and names is not None
            selfSigned = ensureSelfSigned(stateDir, localNames(names))
            files = CertificateFiles(
                selfSigned[0].certificate, selfSigned[0].key, None, spec.certs
            )
        else:
            files = CertificateFiles(spec.cert, spec.key, spec.chain, spec.certs)
        creator = ReloadingServerContext(files)
    except CertificateError as e:
        raise EndpointError(f"{PREFIX}:{spec.port}: {e}") from None
    return TLSServerEndpoint(reactor, spec, creator, selfSigned)


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
        return makeEndpoint(reactor, parseArguments(args, kwargs))
