# -*- test-case-name: tests.unit.test_healthcommand -*-
"""
C{regproxy health}: ask the running daemon's C{/_health} on its own first
listener, for a container's health check.

It reads the same C{--config} file and C{REGPROXY_*} environment as
C{twistd regproxy}, so a health check follows C{--listen} wherever it
points instead of assuming port 80.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.request
from collections.abc import Mapping
from os import environ as processEnvironment

from regproxy.config import ConfigError, loadConfig

_PLAIN = ("regproxy-tcp", "tcp", "tcp6")
_TLS = ("regproxy-tls", "ssl")


def _unescape(value: str) -> str:
    return value.replace("\\:", ":")


def _fields(endpoint: str) -> list[str]:
    """
    An endpoint description's fields, split on unescaped colons.
    """
    fields, current, escaped = [], "", False
    for character in endpoint:
        if escaped:
            current += "\\" + character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append(current)
            current = ""
        else:
            current += character
    fields.append(current)
    return fields


def healthURL(listen: tuple[str, ...]) -> str | None:
    """
    The C{/_health} URL of the first listener this machine can reach:
    plain TCP if there is one, else TLS.  L{None} when no listener is TCP.
    """
    for kinds, scheme in ((_PLAIN, "http"), (_TLS, "https")):
        for endpoint in listen:
            fields = _fields(endpoint)
            if fields[0] not in kinds or len(fields) < 2:
                continue
            port = fields[1]
            if port.startswith("port="):
                port = port[len("port=") :]
            host = "127.0.0.1"
            for field in fields[2:]:
                name, _, value = field.partition("=")
                if name == "interface":
                    value = _unescape(value)
                    if ":" in value:
                        host = "[::1]" if value == "::" else f"[{value}]"
                    elif value not in ("", "0.0.0.0"):
                        host = value
            return f"{scheme}://{host}:{port}/_health"
    return None


def main(
    argv: list[str],
    environ: Mapping[str, str] = processEnvironment,
    opener=urllib.request.urlopen,
) -> int:
    parser = argparse.ArgumentParser(
        prog="regproxy health",
        description="Exit 0 when the daemon's /_health answers 200.",
    )
    parser.add_argument(
        "--config", help="TOML configuration file (also REGPROXY_CONFIG)"
    )
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds to wait")
    options = parser.parse_args(argv)
    try:
        config = loadConfig({}, environ, options.config)
    except ConfigError as e:
        print(f"regproxy health: {e}", file=sys.stderr)
        return 2
    url = healthURL(config.listen)
    if url is None:
        print("regproxy health: no TCP listener to ask", file=sys.stderr)
        return 2
    # Our own listener on this machine: its certificate may be one we made.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with opener(url, timeout=options.timeout, context=context) as response:
            healthy = response.status == 200
    except OSError as e:
        print(f"regproxy health: {url}: {e}", file=sys.stderr)
        return 1
    return 0 if healthy else 1
