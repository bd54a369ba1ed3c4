"""
Tests for L{regproxy.commands.tokencert}, the C{gen-token-auth-cert} command.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from regproxy.auth.issuerkeys import loadIssuer
from regproxy.auth.jwt import TokenVerifier
from regproxy.auth.libtrust import keyID
from regproxy.commands.tokencert import main

from .test_tokens import ecKey


class GenTokenAuthCertTests(SynchronousTestCase):
    """
    The files and the printed settings.
    """

    def setUp(self) -> None:
        self.out = self.mktemp()
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def path(self, ext: str) -> str:
        return os.path.join(os.path.abspath(self.out), f"api.example.com.{ext}")

    def test_files(self) -> None:
        """
        The certificate has CN=ISSUER, the key is private (0600), and the
        kid file holds the certificate key's libtrust kid without a newline.
        """
        self.assertEqual(main(["api.example.com", "--out", self.out]), 0)
        with open(self.path("crt"), "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(
            certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "api.example.com",
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.path("pem")).st_mode), 0o600)
        with open(self.path("kid"), "rb") as f:
            kid = f.read().decode("ascii")
        self.assertEqual(kid, keyID(certificate.public_key()))
        self.assertRegex(kid, r"\A[A-Z2-7]{4}(:[A-Z2-7]{4}){11}\Z")

    def test_issuerFromFiles(self) -> None:
        """
        The files load into an issuer whose tokens verify.
        """
        main(["api.example.com", "--out", self.out])
        clock = Clock()
        issuer = loadIssuer(
            "api.example.com", self.path("pem"), self.path("crt"), clock
        )
        verifier = TokenVerifier.forKeys(
            "api.example.com", "registry", [ecKey(issuer.chain[0])], clock
        )
        self.assertEqual(
            verifier.verify(issuer.issue("a", "registry").token)["sub"], "a"
        )

    def test_kidMatchesOpenSSL(self) -> None:
        """
        The kid file agrees with the kid computed from the key file by
        openssl, the way openBalena's script does it.
        """
        if shutil.which("openssl") is None:
            raise SkipTest("openssl is not installed")
        main(["api.example.com", "--out", self.out])
        der = subprocess.run(
            ["openssl", "pkey", "-in", self.path("pem"), "-pubout", "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        digest = subprocess.run(
            ["openssl", "dgst", "-sha256", "-binary"],
            input=der,
            check=True,
            capture_output=True,
        ).stdout
        import base64

        text = base64.b32encode(digest[:30]).decode()
        with open(self.path("kid")) as f:
            self.assertEqual(
                f.read(), ":".join(text[i : i + 4] for i in range(0, 48, 4))
            )

    def test_settings(self) -> None:
        """
        The registry's and regproxy's settings are printed with the absolute
        file paths.
        """
        main(
            [
                "api.example.com",
                "--out",
                self.out,
                "--realm",
                "https://proxy.local/token",
                "--service",
                "reg.local",
            ]
        )
        output = self.stdout.getvalue()
        for line in [
            "REGISTRY_AUTH=token",
            "REGISTRY_AUTH_TOKEN_REALM=https://proxy.local/token",
            "REGISTRY_AUTH_TOKEN_SERVICE=reg.local",
            "REGISTRY_AUTH_TOKEN_ISSUER=api.example.com",
            f"REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE={self.path('crt')}",
            f"--token-issuer api.example.com --token-key {self.path('pem')} --token-cert {self.path('crt')}",
        ]:
            self.assertIn(line, output)
        self.assertNotIn("PRIVATE KEY", output)

    def test_defaultRealm(self) -> None:
        """
        Without --realm, the realm is the issuer's /token over https.
        """
        main(["api.example.com", "--out", self.out])
        self.assertIn(
            "REGISTRY_AUTH_TOKEN_REALM=https://api.example.com/token",
            self.stdout.getvalue(),
        )

    def test_refusesOverwrite(self) -> None:
        """
        Existing files are kept unless --force is given.
        """
        main(["api.example.com", "--out", self.out])
        with open(self.path("pem"), "rb") as f:
            before = f.read()
        self.assertEqual(main(["api.example.com", "--out", self.out]), 1)
        self.assertIn("--force", self.stderr.getvalue())
        with open(self.path("pem"), "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(main(["api.example.com", "--out", self.out, "--force"]), 0)
        with open(self.path("pem"), "rb") as f:
            self.assertNotEqual(f.read(), before)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("pem")).st_mode), 0o600)

    def test_refusesOneExisting(self) -> None:
        """
        Even one existing file stops it, before anything is written.
        """
        os.makedirs(self.out)
        with open(self.path("kid"), "w") as f:
            f.write("old")
        self.assertEqual(main(["api.example.com", "--out", self.out]), 1)
        self.assertFalse(os.path.exists(self.path("pem")))

    def test_badIssuer(self) -> None:
        """
        An issuer that is not a file name is refused.
        """
        self.assertEqual(main(["../etc/passwd", "--out", self.out]), 2)
        self.assertIn("cannot be used as a file name", self.stderr.getvalue())
