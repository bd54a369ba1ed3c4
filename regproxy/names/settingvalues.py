# -*- test-case-name: tests.unit.test_config -*-
"""
The grammars of setting values: each parser takes one raw value (a string
from a flag or the environment, or any TOML value from the file) and
returns the field's value, or raises L{ValueError} saying what is wrong
(never echoing a secret, since the value may be one).

They are pure functions of their input, so they live with the other
grammars, apart from L{regproxy.config}, which declares the settings and
loads them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from hyperlink import URL

from regproxy.names.sizes import parseSize

T = TypeVar("T")


def optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    """
    C{parse}, taking nothing (absent or empty) as L{None}.
    """

    def parseOptional(value: Any) -> T | None:
        if value is None or value == "":
            return None
        return parse(value)

    return parseOptional


def parseText(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    if not value:
        raise ValueError("must not be empty")
    return value


parseOptionalText = optional(parseText)


def parseHTTPURL(value: Any) -> str:
    """
    An absolute http or https URL, returned without a trailing slash.
    """
    text = parseText(value)
    if any(c.isspace() for c in text):
        raise ValueError(f"must not contain white space: {text!r}")
    try:
        url = URL.from_text(text)
        port = url.port
    except Exception as e:
        raise ValueError(f"not a URL: {e}") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"port out of range: {text!r}")
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"not an http or https URL: {text!r}")
    if url.query or url.fragment:
        raise ValueError(f"must not have a query or fragment: {text!r}")
    return text.rstrip("/")


def parseUpstreamURL(value: Any) -> str:
    """
    The upstream registry's base URL.  A path is a prefix the registry is
    mounted under (C{https://host/mirror}); a C{/v2} in it is the API
    root, which regproxy adds itself, and would make every request
    C{/v2/v2/...} (every pull then fails with "manifest unknown").
    """
    text = parseHTTPURL(value)
    url = URL.from_text(text)
    if "v2" in url.path:
        base = url.replace(path=url.path[: url.path.index("v2")]).to_text()
        base = base.rstrip("/")
        raise ValueError(
            f"give the registry's base URL without /v2 (regproxy adds "
            f"/v2/ itself): {base!r}, not {text!r}"
        )
    return text


parseOptionalHTTPURL = optional(parseHTTPURL)


def parsePositiveFloat(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a number of seconds")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number of seconds, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return number


def parseBool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


def parseEndpoint(value: Any) -> str:
    """
    A Twisted server endpoint description, checked for its shape here and
    for its meaning when the listener is made.
    """
    text = parseText(value)
    if ":" not in text:
        raise ValueError(
            f"not an endpoint description (e.g. tcp:80 or "
            f"tcp:8080:interface=127.0.0.1): {text!r}"
        )
    return text


def parseCIDR(value: Any) -> str:
    """
    An IP network (C{10.0.0.0/8}, C{::1}); a bare address is one host.
    """
    text = parseText(value)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"not an IP address or network: {text!r}") from None


def parseLogFormat(value: Any) -> str:
    text = parseText(value)
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {text!r}")
    return text


def parseResolver(value: Any) -> str | None:
    """
    C{balena}, C{identity} or C{static:FILE}.
    """
    if value is None or value == "":
        return None
    text = parseText(value)
    if text in ("balena", "identity"):
        return text
    if text.startswith("static:") and len(text) > len("static:"):
        return text
    raise ValueError(f"expected balena, identity or static:FILE, got {text!r}")


def parseAuthMode(value: Any) -> str:
    text = parseText(value)
    if text not in ("broker", "passthrough"):
        raise ValueError(f"expected broker or passthrough, got {text!r}")
    return text


def parseSizeSetting(value: Any) -> int:
    """
    A size such as C{20GiB}, C{500MB} or C{0}, in bytes.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 20GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return value
    return parseSize(parseText(value))


def parseOptionalSize(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return parseSizeSetting(value)


def parseFleetSlug(value: Any) -> str:
    """
    A fleet as C{org/fleet}.
    """
    text = parseText(value)
    org, slash, fleet = text.partition("/")
    if not (org and slash and fleet) or "/" in fleet or any(c.isspace() for c in text):
        raise ValueError(f"expected org/fleet, got {text!r}")
    return text


class ConfigError(ValueError):
    """
    A setting has a value that cannot be used; the message names the option.
    """


@attrs.frozen
class Setting:
    """
    How one configuration field is read from text.

    @ivar parse: Turns one value (a string from a flag or the environment,
        or any TOML value from the file) into the field's value, raising
        L{ValueError} with a short reason when it cannot.
    @ivar repeatable: The option may be given several times; the field
        holds a tuple.
    @ivar switch: A boolean flag that takes no argument.
    @ivar secret: The value must never be shown, not even in error messages.
    """

    parse: Callable[[Any], Any]
    help: str
    repeatable: bool = False
    switch: bool = False
    secret: bool = False
    metavar: str | None = None
    aliases: tuple[str, ...] = ()


def setting(
    default: Any,
    parse: Callable[[Any], Any],
    help: str,
    *,
    repeatable: bool = False,
    switch: bool = False,
    secret: bool = False,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """
    Declare a field of L{Config} that users can set.

    @param aliases: Further environment variables read when the
        C{REGPROXY_} one is not set (names other tools already use).
    """
    return attrs.field(
        default=default,
        repr=not secret,
        metadata={
            "setting": Setting(
                parse, help, repeatable, switch, secret, metavar, aliases
            )
        },
    )
