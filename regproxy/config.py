# -*- test-case-name: tests.unit.test_config -*-
"""
One frozen configuration value, built from flags, the environment and a TOML
file, in that order of precedence.

Every setting is declared once, as a field of L{Config} made with
L{setting}: the field's name gives the command-line option (C{public_url}
is C{--public-url}), the environment variable (C{REGPROXY_PUBLIC_URL}) and
the file key (C{public-url}, or C{public_url}).  Field names are the names
users type, so they are snake_case where the rest of the code is camelCase.
The grammars of the values are in L{regproxy.names.settingvalues}.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from regproxy.names.settingvalues import (
    ConfigError,
    Setting,
    optional,
    parseAuthMode,
    parseBool,
    parseCIDR,
    parseEndpoint,
    parseFleetSlug,
    parseLogFormat,
    parseOptionalHTTPURL,
    parseOptionalSize,
    parseOptionalText,
    parsePositiveFloat,
    parseResolver,
    parseSizeSetting,
    parseText,
    parseUpstreamURL,
    setting,
)

ENV_PREFIX = "REGPROXY_"
DEFAULT_UPSTREAM = "https://registry2.balena-cloud.com"
DEFAULT_BALENA_API = "https://api.balena-cloud.com"


def defaultStateDir() -> str:
    """
    Where keys and generated files live when C{--state-dir} is not given:
    the system's state directory for root, the user's otherwise.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/regproxy"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "regproxy")


@attrs.frozen
class Config:
    """
    Everything regproxy was told at start-up.
    """

    listen: tuple[str, ...] = setting(
        ("regproxy-tcp:80", "regproxy-tls:5000"),
        parseEndpoint,
        "Listen on this Twisted endpoint; repeat for several, e.g. "
        "tcp:8080:interface=127.0.0.1, regproxy-tcp:80 for every IPv4 and IPv6 "
        "address, or regproxy-tls:5000 for TLS (on every address) with a "
        "certificate from a kept local CA (add :cert=PATH:key=PATH for your own).",
        repeatable=True,
        metavar="ENDPOINT",
    )
    upstream: str = setting(
        DEFAULT_UPSTREAM,
        parseUpstreamURL,
        "The registry to forward to (http or https URL, without /v2; a path "
        "is a prefix the registry is served under).",
        metavar="URL",
    )
    public_url: str | None = setting(
        None,
        parseOptionalHTTPURL,
        "How clients reach regproxy, e.g. https://proxy.local:5000; "
        "by default taken from each request's Host and scheme.",
        metavar="URL",
    )
    state_dir: str = setting(
        attrs.Factory(defaultStateDir),
        parseText,
        "Directory for keys and generated files.",
        metavar="DIR",
    )
    upstream_ca: str | None = setting(
        None,
        parseOptionalText,
        "PEM file of CA certificates to trust for an https upstream "
        "(default: the system's trust store).",
        metavar="FILE",
    )
    connect_timeout: float = setting(
        10.0,
        parsePositiveFloat,
        "Seconds to wait for a connection to an upstream (registry, token "
        "service, balena API); past it the client gets 504.",
        metavar="SECONDS",
    )
    response_timeout: float = setting(
        60.0,
        parsePositiveFloat,
        "Seconds to wait for an upstream's answer (registry, token service, "
        "balena API), and at most this long between pieces of an upload or "
        "of a body; past it the client gets 504, or its connection is closed "
        "mid-body.",
        metavar="SECONDS",
    )
    header_timeout: float = setting(
        30.0,
        parsePositiveFloat,
        "Seconds a client has to send each request's line and headers, "
        "however slowly it trickles them; then the connection is closed.",
        metavar="SECONDS",
    )
    shutdown_grace: float = setting(
        30.0,
        parsePositiveFloat,
        "On SIGTERM, stop accepting connections and give requests in flight "
        "this many seconds to finish before stopping.",
        metavar="SECONDS",
    )
    tls_name: tuple[str, ...] = setting(
        (),
        parseText,
        "An extra host name or IP address for the generated TLS "
        "certificate (repeatable).",
        repeatable=True,
        metavar="NAME",
    )
    mdns: str | None = setting(
        None,
        parseOptionalText,
        "Advertise NAME.local and the registry's services with mDNS (off by default).",
        metavar="NAME",
    )
    resolver: str | None = setting(
        None,
        parseResolver,
        "How client names map to upstream repositories: balena (through "
        "the balena API), identity (unchanged) or static:FILE (a TOML map); "
        "by default balena for balenaCloud's registry or when --balena-api "
        "is given, identity otherwise.",
        metavar="KIND",
    )
    balena_api: str | None = setting(
        None,
        parseOptionalHTTPURL,
        "The balena API that resolves fleet names "
        f"[default: {DEFAULT_BALENA_API} with the balena resolver].",
        metavar="URL",
    )
    api_token: str | None = setting(
        None,
        parseOptionalText,
        "regproxy's own balena API key (also API_TOKEN), used only to "
        "resolve names; it never grants a client anything.",
        secret=True,
        aliases=("API_TOKEN",),
        metavar="KEY",
    )
    auth: str = setting(
        "broker",
        parseAuthMode,
        "broker: clients get our own tokens and we act for them upstream "
        "(needed for fleet names); passthrough: clients authenticate to the "
        "upstream through us.",
        metavar="MODE",
    )
    service_name: str = setting(
        "regproxy",
        parseText,
        "The service name in our challenges and the audience of our tokens.",
        metavar="NAME",
    )
    resolve_cache_ttl: float = setting(
        300.0,
        parsePositiveFloat,
        "Seconds a resolved name is remembered (per name and per asker).",
        metavar="SECONDS",
    )
    resolve_stale_age: float = setting(
        86400.0,
        parsePositiveFloat,
        "While the balena API is down, serve remembered answers up to this "
        "many seconds old.",
        metavar="SECONDS",
    )
    htpasswd: str | None = setting(
        None,
        parseOptionalText,
        "bcrypt htpasswd file of the users regproxy lets in; with it, users "
        "are enforced on every request and the upstream is reached with "
        "--upstream-user or anonymously. Re-read when it changes.",
        metavar="FILE",
    )
    access: str | None = setting(
        None,
        parseOptionalText,
        "TOML rules of which users may pull, push or delete which "
        "repositories [default with --htpasswd: every user pulls and "
        "pushes everything, anonymous clients nothing].",
        metavar="FILE",
    )
    upstream_user: str | None = setting(
        None,
        parseOptionalText,
        "User name regproxy uses towards the upstream when it enforces its own users.",
        metavar="NAME",
    )
    upstream_password: str | None = setting(
        None,
        parseOptionalText,
        "Password for --upstream-user (better from the environment or "
        "--upstream-password-file).",
        secret=True,
        metavar="PASSWORD",
    )
    upstream_password_file: str | None = setting(
        None,
        parseOptionalText,
        "File holding the password for --upstream-user.",
        metavar="FILE",
    )
    token_issuer: str = setting(
        "regproxy",
        parseText,
        "The iss of our tokens; a distribution registry's auth.token.issuer.",
        aliases=("REGISTRY_TOKEN_AUTH_CERT_ISSUER",),
        metavar="ISSUER",
    )
    token_key: str | None = setting(
        None,
        parseOptionalText,
        "PEM private key (P-256) that signs our tokens, e.g. ISSUER.pem from "
        "'regproxy gen-token-auth-cert' [default: one kept in --state-dir].",
        metavar="FILE",
    )
    token_cert: str | None = setting(
        None,
        parseOptionalText,
        "The certificate of --token-key (ISSUER.crt), put in the tokens' x5c.",
        metavar="FILE",
    )
    token_lifetime: float = setting(
        300.0,
        parsePositiveFloat,
        "Seconds our tokens are valid for.",
        metavar="SECONDS",
    )
    cors_origin: tuple[str, ...] = setting(
        (),
        parseText,
        "A browser origin (https://ui.example) allowed to use the registry "
        "API from JavaScript (repeatable; * for any).",
        repeatable=True,
        metavar="ORIGIN",
    )
    cache_dir: str | None = setting(
        None,
        parseOptionalText,
        "Directory of the LAN cache of blobs and manifests [default: STATE_DIR/cache].",
        metavar="DIR",
    )
    cache_size: int | None = setting(
        None,
        parseOptionalSize,
        "Most bytes the cache keeps, e.g. 20GiB or 500MB; 0 turns the cache "
        "off [default: half the free space of its filesystem at start, at "
        "most 20GiB].",
        metavar="SIZE",
    )
    cache_min_free: int = setting(
        1024**3,
        parseSizeSetting,
        "Stop storing new content while the cache's filesystem has less "
        "free space than this.",
        metavar="SIZE",
    )
    cache_auth_ttl: float = setting(
        300.0,
        parsePositiveFloat,
        "Seconds an upstream's yes or no for one client on one repository "
        "is remembered before a cached answer is served to it again.",
        metavar="SECONDS",
    )
    cache_offline_grace: float = setting(
        86400.0,
        parsePositiveFloat,
        "While the upstream is unreachable, serve cached content to clients "
        "allowed up to this many seconds ago.",
        metavar="SECONDS",
    )
    cache_stale: float = setting(
        86400.0,
        parsePositiveFloat,
        "While the upstream is unreachable, answer a tag or fleet name with "
        "its last known manifest up to this many seconds old (marked with a "
        "Warning header).",
        metavar="SECONDS",
    )
    cache_protect: float = setting(
        7 * 86400.0,
        parsePositiveFloat,
        "The newest manifest of each tag or fleet name pulled within this "
        "many seconds, and its blobs, are evicted last.",
        metavar="SECONDS",
    )
    warm_fleet: tuple[str, ...] = setting(
        (),
        parseFleetSlug,
        "Follow this fleet's target release (org/fleet) and fetch its images "
        "into the cache when it changes (repeatable; private fleets need "
        "--api-token).",
        repeatable=True,
        metavar="ORG/FLEET",
    )
    metrics: str | None = setting(
        None,
        optional(parseEndpoint),
        "Serve Prometheus metrics on this endpoint of their own, e.g. "
        "tcp:9100:interface=127.0.0.1 (off by default).",
        metavar="ENDPOINT",
    )
    log_format: str = setting(
        "text",
        parseLogFormat,
        "text (twistd's lines) or json (one JSON object per line on standard output).",
        metavar="FORMAT",
    )
    trusted_proxy: tuple[str, ...] = setting(
        (),
        parseCIDR,
        "A reverse proxy (address or CIDR) whose Forwarded and X-Forwarded-* "
        "headers are believed for the client address and the public URL "
        "(repeatable); from any other peer they are ignored.",
        repeatable=True,
        metavar="CIDR",
    )


def settings() -> Iterable[tuple[attrs.Attribute, Setting]]:
    """
    The user-settable fields of L{Config}, in declaration order.
    """
    for field in attrs.fields(Config):
        spec = field.metadata.get("setting")
        if spec is not None:
            yield field, spec


def optionName(field: attrs.Attribute) -> str:
    return field.name.replace("_", "-")


def environmentName(field: attrs.Attribute) -> str:
    return ENV_PREFIX + field.name.upper()


def unknownEnvironment(environ: Mapping[str, str]) -> list[str]:
    """
    The C{REGPROXY_*} variables that name no setting (a typo guard), each
    with the one it probably meant.
    """
    known = {environmentName(field) for field, _ in settings()}
    known.add(ENV_PREFIX + "CONFIG")
    problems = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            problem = f"{name}: it matches no setting"
            close = difflib.get_close_matches(name, sorted(known), 1)
            if close:
                problem += f" (did you mean {close[0]}?)"
            problems.append(problem)
    return problems


def _describe(value: Any, spec: Setting) -> str:
    return "the value given" if spec.secret else repr(value)


def _parseOne(field: attrs.Attribute, spec: Setting, value: Any, source: str) -> Any:
    try:
        return spec.parse(value)
    except ValueError as e:
        raise ConfigError(f"--{optionName(field)} ({source}): {e}") from None


def _parseRaw(field: attrs.Attribute, spec: Setting, raw: Any, source: str) -> Any:
    if spec.repeatable:
        if isinstance(raw, str):
            items: list[Any] = [item for item in raw.replace(",", " ").split()]
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise ConfigError(
                f"--{optionName(field)} ({source}): expected a list, "
                f"got {_describe(raw, spec)}"
            )
        return tuple(_parseOne(field, spec, item, source) for item in items)
    if spec.switch:
        try:
            return parseBool(raw)
        except ValueError as e:
            raise ConfigError(f"--{optionName(field)} ({source}): {e}") from None
    return _parseOne(field, spec, raw, source)


def readTOML(path: str) -> dict[str, Any]:
    """
    Read a TOML file (ours, the access rules, a static name map).

    @raise ValueError: It cannot be read or is not TOML; the message names
        the file and says which.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def readConfigFile(path: str) -> dict[str, Any]:
    """
    Read a TOML configuration file into a mapping of field name to raw value.
    """
    try:
        document = readTOML(path)
    except ValueError as e:
        raise ConfigError(f"--config: {e}") from None
    known = {field.name: field for field, _ in settings()}
    values: dict[str, Any] = {}
    for key, value in document.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"--config: {path}: unknown setting {key!r}")
        values[name] = value
    return values


def loadConfig(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    configFile: str | None = None,
) -> Config:
    """
    Build the configuration: flags win over the environment, which wins over
    the file, which wins over the defaults.

    @param flags: Field name to the raw value given on the command line
        (a list for repeatable options); absent when not given.
    @param environ: The process environment.
    @param configFile: A TOML file, or L{None}; C{REGPROXY_CONFIG} names one
        when this is L{None}.
    @raise ConfigError: When a value cannot be used.
    """
    if configFile is None:
        configFile = environ.get(ENV_PREFIX + "CONFIG") or None
    fromFile = readConfigFile(configFile) if configFile else {}
    values: dict[str, Any] = {}
    for field, spec in settings():
        if field.name in flags:
            raw, source = flags[field.name], "flag"
        elif any(name in environ for name in (environmentName(field), *spec.aliases)):
            source = next(
                name
                for name in (environmentName(field), *spec.aliases)
                if name in environ
            )
            raw = environ[source]
        elif field.name in fromFile:
            raw, source = fromFile[field.name], "config file"
        else:
            continue
        values[field.name] = _parseRaw(field, spec, raw, source)
    if values.get("listen") == ():
        raise ConfigError("--listen: at least one listener is needed")
    return Config(**values)
