# -*- test-case-name: tests.unit.test_challenge,tests.unit.test_config,tests.unit.test_urls -*-
"""
Hypothesis strategies for the values regproxy parses at its edges:
authentication challenges, URLs and configuration values.

Shared here so that tests of the modules that consume these values (the
forwarder, the broker, the token endpoint) generate the same shapes as the
parsers' own tests.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from hypothesis import strategies as st

from regproxy.names.challenge import Challenge

# RFC 9110 section 5.6.2 and 11.2.
TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKEN68_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/"

# Challenges ---------------------------------------------------------------

tokens = st.text(TCHARS, min_size=1, max_size=16)

# Any text a quoted-string can carry once escaped: no control characters
# (HTTP field values cannot hold them), anything else including quotes,
# backslashes, commas and non-ASCII.
paramValues = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40
)

token68s = st.builds(
    lambda body, padding: body + "=" * padding,
    st.text(TOKEN68_CHARS, min_size=1, max_size=32),
    st.integers(min_value=0, max_value=2),
)

paramChallenges = st.builds(
    Challenge,
    tokens,
    st.lists(st.tuples(tokens, paramValues), max_size=5).map(tuple),
)

token68Challenges = st.builds(
    lambda scheme, token68: Challenge(scheme, (), token68), tokens, token68s
)

challenges = st.one_of(paramChallenges, token68Challenges)

challengeLists = st.lists(challenges, max_size=4)

# Text that looks like a WWW-Authenticate header often enough to reach deep
# into a parser: the grammar's punctuation, spaces and a few letters.
challengeLikeText = st.text(' \t,="\\=/+.aBzZ09', max_size=60)

# URLs ---------------------------------------------------------------------

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
dnsNames = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(
        # A name of digits and dots only would read as an IPv4 address.
        lambda name: not name.replace(".", "").isdigit()
    )
)
ipv4Hosts = st.ip_addresses(v=4).map(str)
ipv6Hosts = st.ip_addresses(v=6).map(str)
hosts = st.one_of(dnsNames, ipv4Hosts, ipv6Hosts)
schemes = st.sampled_from(["http", "https"])
ports = st.integers(min_value=1, max_value=65535)
pathSegments = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=10),
    max_size=3,
)


def hostInURL(host: str) -> str:
    """
    The host as written in a URL: IPv6 literals in brackets.
    """
    return f"[{host}]" if ":" in host else host


@st.composite
def httpURLs(draw: Any, withPath: bool = True) -> str:
    """
    Absolute http and https URLs with a host, an optional port and, when
    C{withPath}, an optional path (sometimes with a trailing slash); never a
    query or a fragment.
    """
    scheme = draw(schemes)
    url = f"{scheme}://{hostInURL(draw(hosts))}"
    if draw(st.booleans()):
        url += f":{draw(ports)}"
    if withPath:
        segments = draw(pathSegments)
        if segments:
            url += "/" + "/".join(segments)
    if draw(st.booleans()):
        url += "/"
    return url


# Any bytes a registry might put after the authority of a Location: a path
# starting with "/" and an optional query, byte for byte (percent-encoded
# bytes, "=", "&", raw non-ASCII, anything).
locationPaths = st.binary(max_size=60).map(lambda rest: b"/" + rest)
locationQueries = st.one_of(
    st.just(b""), st.binary(max_size=60).map(lambda rest: b"?" + rest)
)

# Configuration values -----------------------------------------------------

endpoints = st.builds(
    lambda port, interface: f"tcp:{port}:interface={interface}",
    st.integers(min_value=0, max_value=65535),
    st.sampled_from(["127.0.0.1", r"\:\:1"]),
)
timeouts = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)

_tomlScalars = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30),
    httpURLs(),
    endpoints,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.just(datetime.timezone.utc)),
    st.dates(),
    st.times(),
)

tomlValues = st.recursive(
    _tomlScalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text(TCHARS, min_size=1, max_size=8), children, max_size=3),
    ),
    max_leaves=6,
)
"""
Any value a TOML document can hold; write it with L{toTOML}.
"""


def _tomlString(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def toTOML(value: Any) -> str:
    """
    Write C{value} (from L{tomlValues}) as a TOML value expression.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _tomlString(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toTOML(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{_tomlString(k)} = {toTOML(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(f"not a TOML value: {value!r}")
