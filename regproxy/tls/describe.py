# -*- test-case-name: tests.unit.test_certcommand -*-
"""
What regproxy tells people about its certificates: the lines
C{regproxy cert show} prints and the daemon logs, and the commands a client
machine runs to trust the local CA.
"""

from __future__ import annotations

import datetime
import shlex

from cryptography import x509

from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.pem import fingerprint


def _left(notAfter: datetime.datetime, now: datetime.datetime) -> str:
    return "EXPIRED" if notAfter <= now else f"{(notAfter - now).days} days left"


def certificateLines(
    certificate: x509.Certificate, path: str, now: datetime.datetime
) -> list[str]:
    """
    Path, names, fingerprint and expiry, one per line.
    """
    names = SubjectNames.fromCertificate(certificate)
    notAfter = certificate.not_valid_after_utc
    return [
        f"certificate: {path}",
        f"names: {', '.join(names.describe()) or '(none)'}",
        f"SHA-256 fingerprint: {fingerprint(certificate)}",
        f"expires: {notAfter:%Y-%m-%d %H:%M} UTC ({_left(notAfter, now)})",
    ]


def localCALines(
    ca: x509.Certificate,
    caPath: str,
    server: x509.Certificate | None,
    serverPath: str,
    now: datetime.datetime,
) -> list[str]:
    """
    The CA clients install (with the fingerprint to check), then the server
    certificate it signed, which regproxy renews by itself.
    """
    lines = [
        f"CA {line}" if line.startswith("certificate") else line
        for line in certificateLines(ca, caPath, now)
        if not line.startswith("names:")
    ]
    lines.append("clients install the CA certificate (it is served at /_ca.crt)")
    if server is not None:
        names = SubjectNames.fromCertificate(server)
        notAfter = server.not_valid_after_utc
        lines += [
            f"server certificate: {serverPath}",
            f"names: {', '.join(names.describe()) or '(none)'}",
            f"server certificate expires: {notAfter:%Y-%m-%d %H:%M} UTC "
            f"({_left(notAfter, now)}; renewed by regproxy while it runs)",
        ]
    return lines


def clientSetup(host: str, port: int | str, fingerprintText: str) -> str:
    """
    What a client machine must run to trust our CA when it talks to
    C{host:port}: fetch C{/_ca.crt}, check the fingerprint, install it for
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
            "# 1. Fetch the CA certificate and check it is ours",
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
