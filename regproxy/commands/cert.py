# -*- test-case-name: tests.unit.test_certcommand -*-
"""
C{regproxy cert}: look at the local CA and the server certificate the
daemon made, and print what client machines must run to trust the CA.

It reads the same C{--state-dir}, C{--config} file and C{REGPROXY_*}
environment as C{twistd regproxy}, so it finds the daemon's certificate
without being told where it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from cryptography import x509

from regproxy.commands.arguments import OneLineParser
from regproxy.config import ConfigError, loadConfig
from regproxy.tls.certificates import utcnow
from regproxy.tls.describe import certificateLines, clientSetup, localCALines
from regproxy.tls.hostnames import SubjectNames, localNames, parseName
from regproxy.tls.localca import SelfSignedPaths
from regproxy.tls.pem import CertificateError, fingerprint, loadCertificates


def _parser() -> argparse.ArgumentParser:
    # The daemon's settings are accepted before or after the subcommand.
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="TOML configuration file (also REGPROXY_CONFIG)",
    )
    common.add_argument(
        "--state-dir", default=argparse.SUPPRESS, help="the daemon's state directory"
    )
    common.add_argument(
        "--tls-name",
        action="append",
        default=argparse.SUPPRESS,
        help="an extra name the daemon is given (repeatable)",
    )
    parser = OneLineParser(
        prog="regproxy cert",
        description="Show regproxy's TLS certificate and how clients trust it.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "show", help="path, names, fingerprint and expiry", parents=[common]
    )
    show.add_argument("--cert", help="show this PEM file instead of the generated one")
    setup = commands.add_parser(
        "client-setup",
        help="the commands docker, podman and containerd clients need",
        parents=[common],
    )
    setup.add_argument(
        "address", metavar="HOST:PORT", help="how clients reach regproxy"
    )
    setup.add_argument("--cert", help="use this PEM file instead of the generated one")
    return parser


def splitAddress(text: str) -> tuple[str, int]:
    """
    C{host:port}, C{[v6]:port} or a bare host (port 5000, the TLS default).

    @raise ValueError: With a reason to show the user.
    """
    host, port = text, "5000"
    if text.startswith("["):
        close = text.find("]")
        if close == -1:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    try:
        parseName(host)
    except CertificateError:
        raise ValueError(
            f"{text!r}: {host!r} is not a host name or an IP address"
        ) from None
    return host, int(port)


def _load(path: str) -> x509.Certificate:
    return loadCertificates(path)[0]


def _loadIfThere(path: str) -> x509.Certificate | None:
    try:
        return _load(path)
    except CertificateError:
        return None


def show(
    ca: x509.Certificate,
    paths: SelfSignedPaths,
    current: SubjectNames | None,
    out: TextIO,
) -> None:
    """
    Print the CA and the server certificate it signed; say so when this
    machine's names no longer match the server certificate's.
    """
    server = _loadIfThere(paths.server)
    lines = localCALines(ca, paths.ca, server, paths.server, utcnow())
    served = SubjectNames.fromCertificate(server) if server is not None else None
    if current is not None and current != served:
        lines.append(
            "note: this machine's names are now "
            f"{', '.join(current.describe())}; the running regproxy issues a new "
            "server certificate for them at a client's connection (looking at most "
            "once a minute) or on SIGHUP, signed by the same CA"
        )
    print("\n".join(lines), file=out)


def main(
    argv: list[str],
    environ: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    flags: dict[str, object] = {}
    if getattr(args, "state_dir", None) is not None:
        flags["state_dir"] = args.state_dir
    if getattr(args, "tls_name", None):
        flags["tls_name"] = args.tls_name
    try:
        config = loadConfig(flags, environ, getattr(args, "config", None))
    except ConfigError as e:
        print(f"regproxy cert: {e}", file=err)
        return 2
    generated = args.cert is None
    paths = SelfSignedPaths.inStateDir(config.state_dir)
    path = args.cert or paths.ca
    if generated and not os.path.exists(path):
        print(
            f"regproxy cert: no certificate in {os.path.dirname(path)} yet: regproxy "
            "makes one when it first starts with a regproxy-tls listener",
            file=err,
        )
        return 1
    try:
        certificate = _load(path)
    except CertificateError as e:
        print(f"regproxy cert: {e}", file=err)
        return 1
    if args.command == "show":
        if not generated:
            print("\n".join(certificateLines(certificate, path, utcnow())), file=out)
            return 0
        try:
            current = localNames(config.tls_name)
        except CertificateError:
            current = None
        show(certificate, paths, current, out)
        return 0
    try:
        host, port = splitAddress(args.address)
    except ValueError as e:
        print(f"regproxy cert client-setup: {e}", file=err)
        return 2
    served = _loadIfThere(paths.server) if generated else certificate
    names = SubjectNames.fromCertificate(served or certificate)
    if not names.covers(host):
        hint = (
            f"add --tls-name {host} (or REGPROXY_TLS_NAME) and restart regproxy"
            if generated
            else "use a name the certificate has"
        )
        print(
            f"warning: {host} is not among the certificate's names "
            f"({', '.join(names.describe())}); clients will refuse it: {hint}",
            file=err,
        )
    print(clientSetup(host, port, fingerprint(certificate)), file=out)
    return 0
