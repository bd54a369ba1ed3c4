# -*- test-case-name: tests.unit.test_tls -*-
"""
The names a certificate is for: what C{--tls-name} values mean, which
names and addresses this machine answers to, and which of them clients
should be told to use.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

import attrs
from cryptography import x509

from regproxy.tls.pem import CertificateError, nameMatches

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen
class SubjectNames:
    """
    The names a certificate is valid for: DNS names (lower case) and IP
    addresses, each sorted and without duplicates so two sets compare equal
    whatever order they were found in.
    """

    dnsNames: tuple[str, ...] = attrs.field(
        converter=lambda names: tuple(sorted({n.lower() for n in names}))
    )
    ipAddresses: tuple[IPAddress, ...] = attrs.field(
        converter=lambda addrs: tuple(
            sorted(set(addrs), key=lambda a: (a.version, int(a)))
        )
    )

    def describe(self) -> list[str]:
        return list(self.dnsNames) + [str(a) for a in self.ipAddresses]

    def covers(self, host: str) -> bool:
        """
        Whether a client connecting to C{host} accepts a certificate with
        these names.

        @raise CertificateError: C{host} is neither a name nor an address.
        """
        dnsName, address = parseName(host)
        if address is not None:
            return address in self.ipAddresses
        assert dnsName is not None
        return any(nameMatches(pattern, dnsName) for pattern in self.dnsNames)

    def subjectAlternativeName(self) -> x509.SubjectAlternativeName:
        return x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in self.dnsNames]
            + [x509.IPAddress(a) for a in self.ipAddresses]
        )

    @classmethod
    def fromCertificate(cls, certificate: x509.Certificate) -> SubjectNames:
        try:
            san = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            return cls((), ())
        return cls(
            san.get_values_for_type(x509.DNSName),
            san.get_values_for_type(x509.IPAddress),
        )


def parseName(text: str) -> tuple[str | None, IPAddress | None]:
    """
    Sort one C{--tls-name} value into a DNS name or an IP address.

    @return: C{(dnsName, None)} or C{(None, address)}.
    @raise CertificateError: When it is neither.
    """
    candidate = text.strip()
    try:
        return None, ipaddress.ip_address(candidate.strip("[]"))
    except ValueError:
        pass
    name = candidate.rstrip(".").lower()
    labels = name.split(".")
    valid = 0 < len(name) <= 253 and all(
        0 < len(label) <= 63
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
        for label in (labels[1:] if labels[0] == "*" and len(labels) > 1 else labels)
    )
    if not valid:
        raise CertificateError(
            f"--tls-name: {text!r} is neither a host name nor an IP address"
        )
    return name, None


def _usableAddress(address: IPAddress) -> bool:
    return not (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
    )


def interfaceAddresses() -> list[IPAddress]:
    """
    This host's addresses that other machines can reach: every interface
    address except loopback and link-local ones (a link-local address needs
    a zone in URLs, so clients do not use it to name a registry).
    """
    import ifaddr  # zeroconf's own dependency; imported late, it walks the system.

    found: list[IPAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                address = ipaddress.ip_address(raw.split("%")[0])
            except ValueError:
                continue
            if _usableAddress(address):
                found.append(address)
    return found


def selfSignedNames(
    hostname: str, addresses: Iterable[IPAddress], extra: Iterable[str]
) -> SubjectNames:
    """
    The subject alternative names of the generated certificate: the host
    name and C{<hostname>.local}, the given addresses, C{localhost} and both
    loopback addresses (what people type on the machine itself), and the
    C{--tls-name} values.
    """
    dns: list[str] = ["localhost"]
    ips: list[IPAddress] = [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    short = hostname.split(".")[0]
    for name in {hostname, short + ".local"}:
        try:
            dnsName, _ = parseName(name)
        except CertificateError:
            continue  # An odd host name must not stop start-up.
        if dnsName:
            dns.append(dnsName)
    ips.extend(addresses)
    for text in extra:
        dnsName, address = parseName(text)
        if dnsName is not None:
            dns.append(dnsName)
        if address is not None:
            ips.append(address)
    return SubjectNames(dns, ips)


def localNames(extra: Iterable[str] = ()) -> SubjectNames:
    """
    L{selfSignedNames} for this machine as it is now.
    """
    return selfSignedNames(socket.gethostname(), interfaceAddresses(), extra)


def hostsFor(names: SubjectNames) -> Sequence[str]:
    """
    The names clients may use for us, most useful first: DNS names other
    than localhost, then non-loopback addresses.
    """
    dns = [n for n in names.dnsNames if n != "localhost" and "*" not in n]
    dns.sort(key=lambda n: (not n.endswith(".local"), n))
    ips = [str(a) for a in names.ipAddresses if not a.is_loopback]
    return dns + ips
