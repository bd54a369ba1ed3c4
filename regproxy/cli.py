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

from regproxy import __version__

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
    "health": (
        "regproxy.commands.health",
        "exit 0 when the running daemon's /_health answers (container checks)",
    ),
}


def usage() -> str:
    lines = ["usage: regproxy COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:22} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        "The daemon itself is 'twistd regproxy' (e.g. twistd -n --pidfile= regproxy;",
        "'twistd regproxy --help' lists its options).  'regproxy COMMAND --help'",
        "shows a command's.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"regproxy {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        what = "option" if argv[0].startswith("-") else "command"
        print(
            f"regproxy: unknown {what} {argv[0]!r}; see 'regproxy --help'",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
