# -*- test-case-name: tests.unit.test_tokencert -*-
"""
C{regproxy gen-token-auth-cert ISSUER [--out DIR]}: make the signing key, the
certificate and the kid file for a distribution registry in token mode, as
openBalena's C{gen-token-auth-cert} script does, and print the settings for
both sides.

The files are C{ISSUER.crt} (the registry's C{rootcertbundle}),
C{ISSUER.pem} (the private key, mode 0600) and C{ISSUER.kid} (the libtrust
key id, no newline).  openBalena keeps them base64-encoded in
C{REGISTRY_TOKEN_AUTH_CERT}, C{_CERT_KEY} and C{_CERT_KID}
(C{base64 -w0 FILE}).
"""

from __future__ import annotations

import argparse
import os
import sys

from regproxy.auth.issuerkeys import generateIssuerKeyAndCertificate
from regproxy.auth.libtrust import keyID
from regproxy.commands.arguments import OneLineParser
from regproxy.tls.pem import (
    certificatePEM,
    privateKeyPEM,
    writeAtomically,
    writeExclusively,
)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="regproxy gen-token-auth-cert",
        description="Make the ES256 key, self-signed certificate and libtrust kid "
        "that a distribution registry in token mode needs to trust regproxy's tokens.",
    )
    parser.add_argument(
        "issuer",
        metavar="ISSUER",
        help="the token issuer name (iss, and the certificate's CN)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="where to write the files (default: .)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument(
        "--realm",
        metavar="URL",
        help="the token endpoint clients are sent to (default: https://ISSUER/token)",
    )
    parser.add_argument(
        "--service",
        metavar="NAME",
        default="registry",
        help="the registry's service name, the tokens' audience (default: registry)",
    )
    return parser


def _write(path: str, data: bytes, mode: int, force: bool) -> None:
    if force:
        writeAtomically(path, data, mode)
    elif not writeExclusively(path, data, mode):
        raise FileExistsError(f"{path} appeared while we were writing")


def main(argv: list[str]) -> int:
    options = _parser().parse_args(argv)
    issuer: str = options.issuer
    if not issuer or "/" in issuer or issuer.startswith(".") or "\0" in issuer:
        print(
            f"regproxy gen-token-auth-cert: {issuer!r} cannot be used as a file name; "
            f"use a host name such as api.example.com",
            file=sys.stderr,
        )
        return 2
    directory = os.path.abspath(options.out)
    paths = {
        ext: os.path.join(directory, f"{issuer}.{ext}") for ext in ("crt", "pem", "kid")
    }
    existing = [p for p in paths.values() if os.path.lexists(p)]
    if existing and not options.force:
        print(
            f"regproxy gen-token-auth-cert: not replacing {', '.join(existing)} "
            f"(use --force to make a new key; registries trusting the old one "
            f"will then refuse our tokens)",
            file=sys.stderr,
        )
        return 1
    os.makedirs(directory, exist_ok=True)
    key, certificate = generateIssuerKeyAndCertificate(issuer)
    kid = keyID(key.public_key())
    try:
        _write(paths["pem"], privateKeyPEM(key), 0o600, options.force)
        _write(paths["crt"], certificatePEM(certificate), 0o644, options.force)
        _write(paths["kid"], kid.encode("ascii"), 0o644, options.force)
    except OSError as e:
        print(f"regproxy gen-token-auth-cert: {e}", file=sys.stderr)
        return 1
    realm = options.realm or f"https://{issuer}/token"
    print(
        f"Wrote {paths['crt']}\n"
        f"      {paths['pem']} (private key, mode 0600)\n"
        f"      {paths['kid']} (kid {kid})\n"
        f"\n"
        f"Distribution registry settings:\n"
        f"  REGISTRY_AUTH=token\n"
        f"  REGISTRY_AUTH_TOKEN_REALM={realm}\n"
        f"  REGISTRY_AUTH_TOKEN_SERVICE={options.service}\n"
        f"  REGISTRY_AUTH_TOKEN_ISSUER={issuer}\n"
        f"  REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE={paths['crt']}\n"
        f"\n"
        f"regproxy settings:\n"
        f"  twistd regproxy --token-issuer {issuer} --token-key {paths['pem']} "
        f"--token-cert {paths['crt']}\n"
        f"\n"
        f"openBalena-style variables hold the same files base64-encoded "
        f"(base64 -w0 FILE): REGISTRY_TOKEN_AUTH_CERT (.crt), "
        f"REGISTRY_TOKEN_AUTH_CERT_KEY (.pem), REGISTRY_TOKEN_AUTH_CERT_KID (.kid)."
    )
    return 0
