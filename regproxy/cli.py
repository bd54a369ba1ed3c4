# -*- test-case-name: tests.unit.test_tap -*-
"""
The C{regproxy} command beside the daemon: small tools that read the same
state directory, configuration file and environment as C{twistd regproxy}.

Each subcommand lives in its own module and exposes C{main(argv) -> int};
this module only dispatches, so a tool's imports cost nothing to the others.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "gen-token-auth-cert": (
        "regproxy.commands.tokencert",
        "make the key, certificate and kid for a token-mode registry",
    ),
    "cache": (
        "regproxy.commands.cache",
        "verify, stats, warm: look after the LAN cache",
    ),
    "cert": (
        "regproxy.commands.cert",
        "show the TLS certificate; print client setup for HOST:PORT",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: regproxy COMMAND [ARGS...]", "", "commands:"]
        lines += [f"  {name:22} {summary}" for name, (_, summary) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if argv[:1] else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
