# -*- test-case-name: tests.unit.test_tls -*-
"""
Certificates for the TLS listener: generate a self-signed one and keep it in
the state directory, load and check provided ones, and say what clients must
do to trust them.

Everything here is plain functions over files and values; choosing a
certificate per connection and reloading it live is L{regproxy.tls.context}'s
job.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shlex
import socket
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from regproxy.tls.selfsigned import selfSignedBuilder

#: Make a new self-signed certificate when the old one has less than this left.
RENEW_BEFORE = datetime.timedelta(days=30)
#: How long a generated certificate lasts (within the 398 days some clients
#: accept for server certificates).
SELF_SIGNED_LIFETIME = datetime.timedelta(days=365)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateError(ValueError):
    """
    A certificate or key cannot be used; the message is one line that names
    the file and says why.
    """


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def fingerprint(certificate: x509.Certificate) -> str:
    """
    The SHA-256 fingerprint as C{openssl x509 -fingerprint -sha256} prints it,
    so users can compare the two by eye.
    """
    digest = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


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
    L{selfSignedNames} for this machine.
    """
    return selfSignedNames(socket.gethostname(), interfaceAddresses(), extra)


@attrs.frozen(eq=False)
class CertifiedKey:
    """
    A private key with its certificate and the chain to send after it.

    @ivar chain: Intermediate certificates, leaf's issuer first.
    """

    certificate: x509.Certificate
    key: Any
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def names(self) -> SubjectNames:
        return SubjectNames.fromCertificate(self.certificate)

    @property
    def notAfter(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def certificatePEM(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def keyPEM(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {what} {path}: {e.strerror}") from None


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CertificateError(f"{what} {path} holds no PEM certificate")
    return certificates


def _privateKey(data: bytes, path: str) -> Any:
    if b"PRIVATE KEY-----" not in data:
        raise CertificateError(f"key {path} holds no PEM private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"key {path} is encrypted; give an unencrypted key"
        ) from None
    except Exception as e:  # ValueError, UnsupportedAlgorithm, ...: all one story
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CertificateError(f"key {path} cannot be read: {reason}") from None


def checkCertifiedKey(
    certifiedKey: CertifiedKey, where: str, now: datetime.datetime | None = None
) -> CertifiedKey:
    """
    Refuse a key that does not belong to its certificate, and a certificate
    that is expired or not yet valid.
    """
    now = now or _utcnow()
    leaf = certifiedKey.certificate
    try:
        publicKey = certifiedKey.key.public_key()
    except AttributeError:
        raise CertificateError(f"{where}: not a private key") from None
    if publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertificateError(f"{where}: the key does not match the certificate")
    if leaf.not_valid_after_utc <= now:
        raise CertificateError(
            f"{where}: the certificate expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"{where}: the certificate is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return certifiedKey


def loadCertifiedKey(
    certPath: str,
    keyPath: str | None = None,
    chainPath: str | None = None,
    now: datetime.datetime | None = None,
) -> CertifiedKey:
    """
    Load a certificate, its key and its chain, and check them.

    The certificate file may carry the chain after the leaf, and (when
    C{keyPath} is L{None}) the key too, as one PEM bundle.

    @raise CertificateError: With a one-line reason.
    """
    certData = _read(certPath, "certificate")
    certificates = _certificates(certData, certPath, "certificate")
    key = _privateKey(
        _read(keyPath, "key") if keyPath else certData, keyPath or certPath
    )
    chain = certificates[1:]
    if chainPath:
        chain += _certificates(_read(chainPath, "chain"), chainPath, "chain")
    return checkCertifiedKey(
        CertifiedKey(certificates[0], key, tuple(chain)), certPath, now
    )


def generateSelfSigned(
    names: SubjectNames, now: datetime.datetime | None = None
) -> CertifiedKey:
    """
    A new EC P-256 key and a certificate for it, signed by itself and marked
    as a CA so that clients can install it as their C{ca.crt}.
    """
    now = now or _utcnow()
    key = ec.generate_private_key(ec.SECP256R1())
    commonName = (names.dnsNames or ("regproxy",))[0][:64]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "regproxy"),
            x509.NameAttribute(NameOID.COMMON_NAME, commonName),
        ]
    )
    publicKey = key.public_key()
    san = [x509.DNSName(n) for n in names.dnsNames] + [
        x509.IPAddress(a) for a in names.ipAddresses
    ]
    certificate = (
        selfSignedBuilder(
            key,
            subject,
            now - datetime.timedelta(hours=1),
            now + SELF_SIGNED_LIFETIME,
            pathLength=0,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(publicKey),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(certificate, key)


@attrs.frozen
class SelfSignedPaths:
    """
    Where the generated key and certificate live in the state directory.
    The certificate is also the file clients install as C{ca.crt}.
    """

    directory: str
    certificate: str
    key: str

    @classmethod
    def inStateDir(cls, stateDir: str) -> SelfSignedPaths:
        directory = os.path.join(stateDir, "tls")
        return cls(
            directory,
            os.path.join(directory, "ca.crt"),
            os.path.join(directory, "ca.key"),
        )


def _writeAtomically(path: str, data: bytes, mode: int) -> None:
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _whyRenew(
    paths: SelfSignedPaths, names: SubjectNames, now: datetime.datetime
) -> str | None:
    if not (os.path.exists(paths.certificate) or os.path.exists(paths.key)):
        return "there is none yet"
    try:
        existing = loadCertifiedKey(paths.certificate, paths.key, now=now)
    except CertificateError as e:
        return f"the old one cannot be used ({e})"
    if existing.names != names:
        return (
            f"the names changed (was {', '.join(existing.names.describe())}; "
            f"now {', '.join(names.describe())})"
        )
    if existing.notAfter - now < RENEW_BEFORE:
        return f"the old one expires on {existing.notAfter:%Y-%m-%d}"
    return None


def ensureSelfSigned(
    stateDir: str, names: SubjectNames, now: datetime.datetime | None = None
) -> tuple[SelfSignedPaths, str | None]:
    """
    Make sure the state directory holds a usable self-signed certificate for
    exactly C{names}, generating one when there is none, when the names
    changed or when it expires within L{RENEW_BEFORE}.

    @return: The paths, and why a new certificate was made (L{None} when
        the existing one was kept).
    @raise CertificateError: When the directory cannot be written.
    """
    now = now or _utcnow()
    paths = SelfSignedPaths.inStateDir(stateDir)
    reason = _whyRenew(paths, names, now)
    if reason is None:
        return paths, None
    fresh = generateSelfSigned(names, now)
    try:
        os.makedirs(paths.directory, mode=0o700, exist_ok=True)
        # Key first: a certificate must never sit beside a key it does not match
        # for longer than the two renames take.
        _writeAtomically(paths.key, fresh.keyPEM(), 0o600)
        _writeAtomically(paths.certificate, fresh.certificatePEM(), 0o644)
    except OSError as e:
        raise CertificateError(
            f"cannot write the self-signed certificate in {paths.directory}: "
            f"{e.strerror}"
        ) from None
    return paths, reason


def clientSetup(host: str, port: int | str, fingerprintText: str) -> str:
    """
    What a client machine must run to trust our certificate when it talks
    to C{host:port}: fetch C{/_ca.crt}, check the fingerprint, install it for
    docker, podman (and skopeo, buildah) and containerd.
    """
    where = f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        where = f"[{host}]:{port}"
    url = f"https://{where}"
    docker = f"/etc/docker/certs.d/{where}"
    podman = f"/etc/containers/certs.d/{where}"
    containerd = f"/etc/containerd/certs.d/{where}"
    hostsToml = [
        f'server = "{url}"',
        f'[host."{url}"]',
        f'  ca = "{containerd}/ca.crt"',
    ]
    q = shlex.quote
    return "\n".join(
        [
            "# 1. Fetch the certificate and check it is ours",
            f"curl --insecure --fail --globoff --output ca.crt {q(url + '/_ca.crt')}",
            "openssl x509 -in ca.crt -noout -fingerprint -sha256",
            f"#    the fingerprint it prints must be {fingerprintText}",
            "# 2. docker (no restart needed)",
            f"sudo mkdir -p {q(docker)} && sudo cp ca.crt {q(docker + '/ca.crt')}",
            "# 3. podman, skopeo, buildah",
            f"sudo mkdir -p {q(podman)} && sudo cp ca.crt {q(podman + '/ca.crt')}",
            '# 4. containerd (with config_path = "/etc/containerd/certs.d" in its registry config)',
            f"sudo mkdir -p {q(containerd)} && sudo cp ca.crt {q(containerd + '/ca.crt')}",
            f"printf '%s\\n' {' '.join(map(q, hostsToml))} "
            f"| sudo tee {q(containerd + '/hosts.toml')}",
        ]
    )


def describeCertificate(certifiedKey: CertifiedKey, path: str) -> list[str]:
    """
    The lines C{regproxy cert show} prints and the daemon logs at start.
    """
    return [
        f"certificate: {path}",
        f"names: {', '.join(certifiedKey.names.describe()) or '(none)'}",
        f"SHA-256 fingerprint: {certifiedKey.fingerprint}",
        f"expires: {certifiedKey.notAfter:%Y-%m-%d %H:%M} UTC",
    ]


def hostsFor(names: SubjectNames) -> Sequence[str]:
    """
    The names clients may use for us, most useful first: DNS names other
    than localhost, then non-loopback addresses.
    """
    dns = [n for n in names.dnsNames if n != "localhost" and "*" not in n]
    dns.sort(key=lambda n: (not n.endswith(".local"), n))
    ips = [str(a) for a in names.ipAddresses if not a.is_loopback]
    return dns + ips
