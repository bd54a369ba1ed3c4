# -*- test-case-name: tests.unit.test_forwarded -*-
"""
Who the client is and how it reached us, when regproxy sits behind a
reverse proxy (nginx terminating TLS, balena's public device URL).

Only a peer in C{--trusted-proxy} may tell us: from it, C{Forwarded}
(RFC 7239) or, without that, C{X-Forwarded-For/Proto/Host} say the
client's address and the scheme and host it used.  From anyone else those
headers mean nothing.  Through a chain of trusted proxies the client is the
nearest address, walking back from our peer, that is not itself trusted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs
from twisted.web.iweb import IRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[^"\\]|\\.)*"'
_PAIR = re.compile(rb"\s*(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb")\s*")
_UNQUOTE = re.compile(rb"\\(.)")
# What a host may look like in a URL we build from it.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
_SCHEMES = (b"http", b"https")


class ForwardedParseError(ValueError):
    """
    A C{Forwarded} header that is not RFC 7239's grammar.
    """


def parseForwarded(values: Iterable[bytes]) -> list[dict[str, bytes]]:
    """
    Parse every C{Forwarded} header line into its elements, in order, each
    a mapping of lower-cased parameter name to its (unquoted) value.

    @raise ForwardedParseError: For anything else than
        C{element *( "," element )}, element being C{pair *( ";" pair )}.
    """
    elements: list[dict[str, bytes]] = []
    for value in values:
        position = 0
        element: dict[str, bytes] = {}
        while True:
            match = _PAIR.match(value, position)
            if match is None:
                if position == 0 and not value.strip():
                    break
                raise ForwardedParseError(f"bad Forwarded header: {value[:100]!r}")
            name = match.group(1).lower().decode("ascii")
            raw = match.group(2)
            if raw.startswith(b'"'):
                raw = _UNQUOTE.sub(rb"\1", raw[1:-1])
            if name in element:
                raise ForwardedParseError(f"repeated parameter {name!r}")
            element[name] = raw
            position = match.end()
            if position == len(value):
                elements.append(element)
                break
            separator = value[position : position + 1]
            position += 1
            if separator == b",":
                elements.append(element)
                element = {}
            elif separator != b";":
                raise ForwardedParseError(f"bad Forwarded header: {value[:100]!r}")
    return elements


def serializeForwarded(elements: Sequence[dict[str, bytes]]) -> bytes:
    """
    One C{Forwarded} value for C{elements}, quoting where needed.
    """

    def quote(value: bytes) -> bytes:
        if re.fullmatch(_TOKEN, value):
            return value
        return b'"' + re.sub(rb'(["\\])', rb"\\\1", value) + b'"'

    return b", ".join(
        b";".join(name.encode("ascii") + b"=" + quote(v) for name, v in e.items())
        for e in elements
    )


def nodeAddress(node: bytes) -> Address | None:
    """
    The IP address in a C{for=} node (C{192.0.2.1}, C{192.0.2.1:8080},
    C{[2001:db8::1]:443}) or an X-Forwarded-For entry; L{None} for
    C{unknown}, an obfuscated name or garbage.
    """
    node = node.strip()
    if node.startswith(b"["):
        node = node[1:].partition(b"]")[0]
    elif node.count(b":") == 1:
        node = node.partition(b":")[0]
    try:
        return ipaddress.ip_address(node.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


@attrs.frozen
class ClientView:
    """
    How a request reached us: the client's address, and the scheme and host
    it asked for (L{None} where nothing trusted said).
    """

    address: str
    scheme: bytes | None = None
    host: bytes | None = None


@attrs.frozen
class TrustedProxies:
    """
    The peers whose forwarding headers we believe.
    """

    networks: tuple[Network, ...] = ()

    @classmethod
    def fromStrings(cls, cidrs: Iterable[str]) -> TrustedProxies:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def trusts(self, address: Address | None) -> bool:
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def view(self, request: IRequest) -> ClientView:
        """
        What C{request} says about its client, believing only what trusted
        peers sent.
        """
        peer = getattr(request.getClientAddress(), "host", None) or "-"
        if not self.networks or not self.trusts(nodeAddress(peer.encode("ascii"))):
            return ClientView(peer)
        headers = request.requestHeaders
        try:
            forwarded = parseForwarded(headers.getRawHeaders(b"forwarded", []))
        except ForwardedParseError:
            forwarded = []
        if forwarded:
            chain = [e.get("for", b"unknown") for e in forwarded]
            index = self._clientIndex(chain)
            element = forwarded[index] if index is not None else {}
            return ClientView(
                _addressText(chain[index]) if index is not None else peer,
                _scheme(element.get("proto")),
                _host(element.get("host")),
            )
        chain = _commaList(headers.getRawHeaders(b"x-forwarded-for", []))
        index = self._clientIndex(chain)
        return ClientView(
            _addressText(chain[index]) if index is not None else peer,
            _scheme(_last(headers.getRawHeaders(b"x-forwarded-proto", []))),
            _host(_last(headers.getRawHeaders(b"x-forwarded-host", []))),
        )

    def _clientIndex(self, chain: list[bytes]) -> int | None:
        """
        The entry of C{chain} (oldest first) that is the client: walking
        back from the nearest, the first that is not a trusted proxy, else
        the oldest.
        """
        for index in range(len(chain) - 1, -1, -1):
            if not self.trusts(nodeAddress(chain[index])):
                return index
        return 0 if chain else None


def _commaList(values: list[bytes]) -> list[bytes]:
    return [item.strip() for value in values for item in value.split(b",")]


def _last(values: list[bytes]) -> bytes | None:
    items = _commaList(values)
    return items[-1] if items else None


def _addressText(node: bytes) -> str:
    address = nodeAddress(node)
    if address is not None:
        return str(address)
    return node.strip().decode("ascii", "replace")[:100] or "unknown"


def _scheme(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in _SCHEMES else None


def _host(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    value = value.strip()
    return value if _HOST.fullmatch(value) else None
