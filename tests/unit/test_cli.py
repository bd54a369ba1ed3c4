"""
Tests for L{regproxy.cli}, the C{regproxy} command, and the one-line
errors of its subcommands.
"""

from __future__ import annotations

import sys
from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

from regproxy import __version__
from regproxy.cli import main


class CLITests(SynchronousTestCase):
    def command(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                err.write(e.code + "\n")
        return code, out.getvalue(), err.getvalue()

    def assertOneLine(self, text: str, *needles: str) -> None:
        self.assertEqual(text.count("\n"), 1, text)
        for needle in needles:
            self.assertIn(needle, text)

    def test_version(self) -> None:
        """
        C{regproxy --version} prints the version.
        """
        self.assertEqual(
            self.command("--version"), (0, f"regproxy {__version__}\n", "")
        )

    def test_helpNamesTheDaemon(self) -> None:
        """
        C{regproxy --help} lists the commands and says the daemon is
        C{twistd regproxy}.
        """
        code, out, err = self.command("--help")
        self.assertEqual(code, 0)
        self.assertIn("gen-token-auth-cert", out)
        self.assertIn("twistd regproxy", out)

    def test_unknownCommand(self) -> None:
        """
        An unknown command is one line naming it, pointing to C{--help}.
        """
        code, out, err = self.command("serve")
        self.assertEqual((code, out), (2, ""))
        self.assertOneLine(err, "'serve'", "see 'regproxy --help'")

    def test_unknownOption(self) -> None:
        """
        An unknown option before any command is one line naming it.
        """
        code, out, err = self.command("--bogus")
        self.assertEqual((code, out), (2, ""))
        self.assertOneLine(err, "--bogus", "see 'regproxy --help'")

    def test_subcommandUnknownOption(self) -> None:
        """
        An unknown option to a subcommand is one line naming it, even when
        a required argument is missing too.
        """
        for argv, prog in [
            (("cert", "--bogus"), "regproxy cert"),
            (("cert", "show", "--bogus=1"), "regproxy cert"),
            (("gen-token-auth-cert", "--bogus"), "regproxy gen-token-auth-cert"),
        ]:
            code, out, err = self.command(*argv)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertOneLine(err, "--bogus", f"see '{prog}")

    def test_subcommandMissingArgument(self) -> None:
        """
        A missing argument is one line too.
        """
        code, out, err = self.command("gen-token-auth-cert")
        self.assertEqual(code, 2)
        self.assertOneLine(err, "ISSUER", "see 'regproxy gen-token-auth-cert --help'")

    def test_abbreviation(self) -> None:
        """
        An abbreviation of a known option is still accepted.
        """
        out = self.mktemp()
        code, _, err = self.command("gen-token-auth-cert", "--ou", out, "reg.example")
        self.assertEqual(code, 0, err)
