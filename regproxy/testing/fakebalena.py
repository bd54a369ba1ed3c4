# -*- test-case-name: tests.unit.test_fakebalena -*-
"""
A fake balenaCloud API, for tests: a twisted.web resource over fixture data.

It answers C{GET /v6/<resource>} OData queries (C{$select}, C{$filter},
C{$expand} with nested options, C{$orderby}, C{$top}) in the real API's
shape, C{{"d": [...]}}, and behaves as the real API was seen to:

  - rows of a private fleet are invisible to a client without the key of a
    member of the fleet's organization: the answer is C{200 {"d": []}},
    exactly as for a fleet that does not exist (a wrong key is anonymous);
  - OData syntax characters (C{, / ( ) : ' $}) percent-encoded outside a
    string literal get C{400 Malformed url};
  - expanded single navigations are lists of one row, unexpanded ones are
    C{{"__id": n}}.

Tests can count calls (L{FakeBalenaAPI.calls}), stop the API
(L{FakeBalenaAPI.stop}: answer 503, drop connections, or never answer) and
ask C{/auth/v1/token} for registry tokens that a distribution registry in
token mode trusts, granting C{pull} on the C{v2/<hash>} repositories of the
fleets the user can see.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote

import attrs
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from regproxy.resolve.odata import unquoteString

DEFAULT_REGISTRY = "registry2.balena-cloud.com"

# The default fixture, named so tests can refer to it.
ALICE_KEY = "alice-api-key"  # alice is a member of acme
BOB_KEY = "bob-api-key"  # bob is a member of another organization
BUILDER_KEY = "builder-api-key"  # pushes and pulls every image
DRAFT_VERSION = "1.3.0-1648554962021"


def _hexFor(*parts: str, length: int = 32) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:length]


def commitFor(slug: str, version: str, length: int = 32) -> str:
    """
    The commit the default fixture gives the release C{version} of C{slug}.
    """
    return _hexFor("commit", slug, version, length=length)


# Navigations: table -> name -> (target table, "one" | "many", key).  A "one"
# navigation's key is the field holding the target's id; a "many"
# navigation's key is the target's field pointing back at this row.
NAVIGATIONS: dict[str, dict[str, tuple[str, str, str]]] = {
    "application": {
        "organization": ("organization", "one", "organization"),
        "should_be_running__release": ("release", "one", "should_be_running__release"),
        "owns__release": ("release", "many", "belongs_to__application"),
    },
    "organization": {},
    "release": {
        "belongs_to__application": ("application", "one", "belongs_to__application"),
        "contains__image": ("release_image", "many", "is_part_of__release"),
    },
    "release_image": {
        "image": ("image", "one", "image"),
        "is_part_of__release": ("release", "one", "is_part_of__release"),
    },
    "image": {
        "is_a_build_of__service": ("service", "one", "is_a_build_of__service"),
        "is_part_of__release": ("release_image", "many", "image"),
    },
    "service": {
        "application": ("application", "one", "application"),
    },
}

#: Resources that may be asked for at the top level.
RESOURCES = ("application", "release", "image", "service", "organization")


@attrs.define
class Fixture:
    """
    The data the fake serves; mutable, so a test can add what it needs
    (for example the real C{content_hash} of an image it pushed).
    """

    registryHost: str = DEFAULT_REGISTRY
    tables: dict[str, dict[int, dict[str, Any]]] = attrs.field(
        factory=lambda: {name: {} for name in NAVIGATIONS}
    )
    apiKeys: dict[str, str] = attrs.Factory(dict)
    memberships: dict[str, set[str]] = attrs.Factory(dict)
    passwords: dict[str, str] = attrs.Factory(dict)
    builders: set[str] = attrs.Factory(set)
    _nextID: int = 1

    def _insert(self, table: str, **fields: Any) -> int:
        rowID = self._nextID
        self._nextID += 1
        self.tables[table][rowID] = {"id": rowID, **fields}
        return rowID

    def addUser(
        self,
        username: str,
        apiKey: str,
        orgs: Iterable[str] = (),
        password: str | None = None,
        builder: bool = False,
    ) -> None:
        """
        @param builder: The user may push and pull every image, as balena's
            builder does; tests use it to put the fixture's images into a
            real registry.
        """
        self.apiKeys[apiKey] = username
        self.memberships[username] = set(orgs)
        if password is not None:
            self.passwords[username] = password
        if builder:
            self.builders.add(username)

    def organizationID(self, handle: str) -> int:
        for row in self.tables["organization"].values():
            if row["handle"] == handle:
                return row["id"]
        return self._insert("organization", handle=handle, name=handle)

    def addFleet(self, slug: str, public: bool = False) -> int:
        org, _, name = slug.partition("/")
        return self._insert(
            "application",
            slug=slug,
            app_name=name,
            is_public=public,
            organization=self.organizationID(org),
            should_be_running__release=None,
        )

    def fleet(self, slug: str) -> dict[str, Any]:
        for row in self.tables["application"].values():
            if row["slug"] == slug:
                return row
        raise KeyError(slug)

    def service(self, slug: str, name: str) -> int:
        appID = self.fleet(slug)["id"]
        for row in self.tables["service"].values():
            if row["application"] == appID and row["service_name"] == name:
                return row["id"]
        return self._insert("service", application=appID, service_name=name)

    def addRelease(
        self,
        slug: str,
        version: str,
        *,
        revision: int = 0,
        final: bool = True,
        status: str = "success",
        commit: str | None = None,
        services: Iterable[str] = ("main",),
        imageStatus: str = "success",
        target: bool = False,
    ) -> int:
        """
        Add a release with one image per service.  A final's raw version is
        C{version}, or C{version+revN} for a later revision; a draft's
        C{version} is its full raw version.
        """
        app = self.fleet(slug)
        rawVersion = (
            version if (not final or not revision) else f"{version}+rev{revision}"
        )
        semver = version
        commit = commit or commitFor(slug, rawVersion)
        releaseID = self._insert(
            "release",
            belongs_to__application=app["id"],
            commit=commit,
            semver=semver,
            revision=revision if final else None,
            raw_version=rawVersion,
            is_final=final,
            status=status,
            created_at=f"2024-01-01T00:00:{self._nextID % 60:02d}.000Z",
        )
        for name in services:
            location = f"{self.registryHost}/v2/{_hexFor('image', commit, name)}"
            imageID = self._insert(
                "image",
                is_a_build_of__service=self.service(slug, name),
                is_stored_at__image_location=location,
                content_hash="sha256:" + _hexFor("content", commit, name, length=64),
                status=imageStatus,
            )
            self._insert("release_image", is_part_of__release=releaseID, image=imageID)
        if target:
            app["should_be_running__release"] = releaseID
        return releaseID

    def release(self, slug: str, rawVersion: str) -> dict[str, Any]:
        appID = self.fleet(slug)["id"]
        for row in self.tables["release"].values():
            if (
                row["belongs_to__application"] == appID
                and row["raw_version"] == rawVersion
            ):
                return row
        raise KeyError(rawVersion)

    def images(self, slug: str, rawVersion: str) -> dict[str, dict[str, Any]]:
        """
        The images of a release, by service name.
        """
        releaseID = self.release(slug, rawVersion)["id"]
        result = {}
        for link in self.tables["release_image"].values():
            if link["is_part_of__release"] == releaseID:
                image = self.tables["image"][link["image"]]
                service = self.tables["service"][image["is_a_build_of__service"]]
                result[service["service_name"]] = image
        return result

    def repository(self, slug: str, rawVersion: str, service: str = "main") -> str:
        """
        The upstream repository (C{v2/<hash>}) of one image.
        """
        location = self.images(slug, rawVersion)[service][
            "is_stored_at__image_location"
        ]
        return location.split("/", 1)[1]

    def setContentHash(
        self, slug: str, rawVersion: str, digest: str, service: str = "main"
    ) -> None:
        """
        Record the real manifest digest of an image a test pushed.
        """
        self.images(slug, rawVersion)[service]["content_hash"] = digest

    def allImages(self) -> list[tuple[str, str, str, str]]:
        """
        Every image as C{(slug, raw version, service, repository)}: what a
        test pushes to fill a real registry.
        """
        result = []
        for link in self.tables["release_image"].values():
            release = self.tables["release"][link["is_part_of__release"]]
            image = self.tables["image"][link["image"]]
            service = self.tables["service"][image["is_a_build_of__service"]]
            slug = self.tables["application"][release["belongs_to__application"]][
                "slug"
            ]
            repository = image["is_stored_at__image_location"].split("/", 1)[1]
            result.append(
                (slug, release["raw_version"], service["service_name"], repository)
            )
        return result

    # Visibility

    def owningFleet(self, table: str, row: Mapping[str, Any]) -> dict[str, Any] | None:
        t = self.tables
        if table == "application":
            return dict(row)
        if table == "release":
            return t["application"].get(row["belongs_to__application"])
        if table == "service":
            return t["application"].get(row["application"])
        if table == "image":
            service = t["service"].get(row["is_a_build_of__service"])
            return service and t["application"].get(service["application"])
        if table == "release_image":
            release = t["release"].get(row["is_part_of__release"])
            return release and self.owningFleet("release", release)
        return None

    def visible(self, table: str, row: Mapping[str, Any], username: str | None) -> bool:
        if table == "organization":
            return row["handle"] in self.memberships.get(username or "", set())
        fleet = self.owningFleet(table, row)
        if fleet is None:
            return False
        if fleet["is_public"]:
            return True
        if username is None:
            return False
        org = self.tables["organization"][fleet["organization"]]["handle"]
        return org in self.memberships.get(username, set())


def defaultFixture(registryHost: str = DEFAULT_REGISTRY) -> Fixture:
    """
    An organization C{acme} with:

      - C{acme/public-app} (public): finals C{1.2.3} revisions 0 and 2,
        a failed C{1.2.4}, a successful C{1.9.0} whose image failed, the
        draft L{DRAFT_VERSION} (40-hex commit) and the target C{2.0.0};
        the commits of 1.2.3 rev 0 and rev 2 share their first 7 hex digits;
      - C{acme/private-app} (private): target C{1.0.0};
      - C{acme/multi} (public): C{1.0.0} with services C{frontend} and
        C{backend}, the target;
      - C{acme/empty} (public): no releases.

    Users: C{alice} (key L{ALICE_KEY}, password C{alice-password}) is a
    member of acme; C{bob} (key L{BOB_KEY}) is not; C{builder} (key
    L{BUILDER_KEY}) may push and pull every image.
    """
    f = Fixture(registryHost=registryHost)
    f.addUser("builder", BUILDER_KEY, builder=True)
    f.addUser("alice", ALICE_KEY, ["acme"], password="alice-password")
    f.addUser("bob", BOB_KEY, ["other"], password="bob-password")
    f.organizationID("other")
    f.addFleet("acme/public-app", public=True)
    f.addRelease("acme/public-app", "1.2.3", commit="abcdef1" + "0" * 25)
    f.addRelease("acme/public-app", "1.2.3", revision=2, commit="abcdef1" + "2" * 25)
    f.addRelease("acme/public-app", "1.2.4", status="failed")
    f.addRelease("acme/public-app", "1.9.0", imageStatus="failed")
    f.addRelease(
        "acme/public-app",
        DRAFT_VERSION,
        final=False,
        commit=commitFor("acme/public-app", DRAFT_VERSION, 40),
    )
    f.addRelease("acme/public-app", "2.0.0", target=True)
    f.addFleet("acme/private-app", public=False)
    f.addRelease("acme/private-app", "1.0.0", target=True)
    f.addFleet("acme/multi", public=True)
    f.addRelease("acme/multi", "1.0.0", services=("frontend", "backend"), target=True)
    f.addFleet("acme/empty", public=True)
    return f


# OData parsing


class ODataError(ValueError):
    """
    A query the API would refuse with 400.
    """


# Percent-encoded syntax characters the real API refuses outside literals.
_FORBIDDEN = re.compile(r"%(2[cC]|2[fF]|28|29|3[aA]|27|24)")


def _splitTop(text: str, separators: str) -> list[str]:
    """
    Split at C{separators} outside parentheses and string literals.
    """
    parts, depth, quoted, start = [], 0, False, 0
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise ODataError("unbalanced parentheses")
        elif c in separators and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if quoted or depth:
        raise ODataError("unbalanced quotes or parentheses")
    parts.append(text[start:])
    return parts


def _decodeOutsideLiterals(text: str) -> str:
    """
    Percent-decode the syntax outside string literals (refusing encoded
    syntax characters, as the real API does); literals stay as sent.
    """
    out = []
    for i, piece in enumerate(re.split(r"('(?:[^']|'')*')", text)):
        if i % 2:
            out.append(piece)
            continue
        if _FORBIDDEN.search(piece):
            raise ODataError("Malformed url")
        out.append(unquote(piece))
    return "".join(out)


@attrs.frozen
class ParsedQuery:
    select: tuple[str, ...] | None = None
    filter: Any = None
    expand: tuple[tuple[str, ParsedQuery], ...] = ()
    orderby: tuple[tuple[str, bool], ...] = ()
    top: int | None = None


def parseOptions(text: str, separators: str = "&") -> ParsedQuery:
    options: dict[str, Any] = {}
    for part in _splitTop(text, separators):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise ODataError(f"no value for {key!r}")
        if key == "$select":
            options["select"] = tuple(v.strip() for v in value.split(","))
        elif key == "$filter":
            options["filter"] = parseFilter(value)
        elif key == "$expand":
            expand = []
            for item in _splitTop(value, ","):
                match = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", item, re.S)
                if match is None:
                    raise ODataError(f"bad $expand {item!r}")
                nested = parseOptions(match.group(2) or "", "&;")
                expand.append((match.group(1), nested))
            options["expand"] = tuple(expand)
        elif key == "$orderby":
            order = []
            for item in value.split(","):
                words = item.split()
                if (
                    not words
                    or len(words) > 2
                    or words[1:] not in ([], ["asc"], ["desc"])
                ):
                    raise ODataError(f"bad $orderby {item!r}")
                order.append((words[0], words[1:] == ["desc"]))
            options["orderby"] = tuple(order)
        elif key == "$top":
            if not value.isdigit():
                raise ODataError("bad $top")
            options["top"] = int(value)
        elif key.startswith("$"):
            raise ODataError(f"unsupported option {key}")
    return ParsedQuery(**options)


_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<punct>[()/,:]))"
)
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "startswith": lambda a, b: (
        isinstance(a, str) and isinstance(b, str) and a.startswith(b)
    ),
    "endswith": lambda a, b: (
        isinstance(a, str) and isinstance(b, str) and a.endswith(b)
    ),
    "contains": lambda a, b: isinstance(a, str) and isinstance(b, str) and b in a,
    "substringof": lambda a, b: isinstance(a, str) and isinstance(b, str) and a in b,
    "tolower": lambda a: a.lower() if isinstance(a, str) else a,
    "toupper": lambda a: a.upper() if isinstance(a, str) else a,
}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ODataError(f"unexpected {text[pos : pos + 10]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """
    Recursive descent over the tokens of a C{$filter}; nodes are tuples.
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise ODataError(f"expected {value or 'more'}")
        self.pos += 1
        return token

    def parse(self) -> Any:
        node = self.orExpr()
        if self.peek() is not None:
            raise ODataError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def orExpr(self) -> Any:
        return self.chain("or", self.andExpr)

    def andExpr(self) -> Any:
        return self.chain("and", self.notExpr)

    def chain(self, operator: str, operand: Callable[[], Any]) -> Any:
        """
        C{operand (operator operand)*}, grouped from the left.
        """
        node = operand()
        while self.peek() == ("name", operator):
            self.take()
            node = (operator, node, operand())
        return node

    def notExpr(self) -> Any:
        if self.peek() == ("name", "not"):
            self.take()
            return ("not", self.notExpr())
        left = self.value()
        token = self.peek()
        if token is not None and token[0] == "name" and token[1] in _COMPARISONS:
            self.take()
            return ("cmp", token[1], left, self.value())
        return left

    def value(self) -> Any:
        kind, text = self.take()
        if (kind, text) == ("punct", "("):
            node = self.orExpr()
            self.take(")")
            return node
        if kind == "string":
            try:
                return ("lit", unquoteString(text))
            except ValueError as e:
                raise ODataError(str(e)) from None
        if kind == "number":
            return ("lit", int(text))
        if kind != "name":
            raise ODataError(f"unexpected {text!r}")
        if text in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[text])
        if text in _FUNCTIONS and self.peek() == ("punct", "("):
            self.take("(")
            args = [self.orExpr()]
            while self.peek() == ("punct", ","):
                self.take()
                args.append(self.orExpr())
            self.take(")")
            return ("call", text, tuple(args))
        steps: list[Any] = [text]
        while self.peek() == ("punct", "/"):
            self.take()
            _, name = self.take()
            if name in ("any", "all") and self.peek() == ("punct", "("):
                self.take("(")
                _, variable = self.take()
                self.take(":")
                body = self.orExpr()
                self.take(")")
                return ("lambda", name, tuple(steps), variable, body)
            steps.append(name)
        return ("path", tuple(steps))


def parseFilter(text: str) -> Any:
    return _Parser(_tokenize(text)).parse()


@attrs.frozen
class Call:
    """
    One request the fake received.

    @ivar user: Who the API key belonged to, or L{None}.
    """

    method: str
    path: str
    query: str
    user: str | None


class FakeBalenaAPI(Resource):
    """
    The fake API.  Use it with C{StubTreq(api)}, or serve it with
    C{Site(api)} on a real port.

    @ivar calls: Every request received, in order.
    @ivar mode: C{"up"}, or how it is stopped: C{"503"}, C{"drop"},
        C{"hang"}.
    @ivar issuer: A L{regproxy.auth.jwt.TokenIssuer} for C{/auth/v1/token},
        or L{None} to answer it with 404.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, fixture: Fixture | None = None, issuer: Any = None) -> None:
        super().__init__()
        self.fixture = fixture if fixture is not None else defaultFixture()
        self.issuer = issuer
        self.calls: list[Call] = []
        self.mode = "up"
        self.hanging: list[Any] = []

    @property
    def apiCalls(self) -> list[Call]:
        """
        The OData calls only (not pings or token requests).
        """
        return [c for c in self.calls if c.path.startswith("/v6/")]

    def stop(self, mode: str = "503") -> None:
        """
        Make the API unavailable: answer C{503}, C{drop} connections, or
        C{hang} (never answer).
        """
        if mode not in ("503", "drop", "hang"):
            raise ValueError(mode)
        self.mode = mode

    def start(self) -> None:
        self.mode = "up"

    def _user(self, request: Any) -> str | None:
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.partition(b" ")
        if scheme.lower() == b"bearer":
            return self.fixture.apiKeys.get(value.strip().decode("utf-8", "replace"))
        if scheme.lower() == b"basic":
            try:
                username, _, secret = (
                    base64.b64decode(value, validate=True)
                    .decode("utf-8")
                    .partition(":")
                )
            except ValueError:
                return None
            user = self.fixture.apiKeys.get(secret)
            if user is not None:
                return user
            if self.fixture.passwords.get(username) == secret:
                return username
        return None

    def render(self, request: Any) -> Any:
        path, _, query = request.uri.decode("latin-1").partition("?")
        user = self._user(request)
        self.calls.append(Call(request.method.decode("latin-1"), path, query, user))
        if self.mode == "503":
            return self._json(request, 503, {"error": "Service Unavailable"})
        if self.mode == "drop":
            request.transport.abortConnection()
            return NOT_DONE_YET
        if self.mode == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if path == "/ping":
            request.setHeader(b"content-type", b"text/plain")
            return b"OK"
        if path == "/auth/v1/token" and request.method == b"GET":
            return self._token(request, user)
        match = re.fullmatch(r"/v6/(\w+)", path)
        if request.method != b"GET" or match is None or match.group(1) not in RESOURCES:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain")
            return b"Not Found"
        try:
            parsed = parseOptions(_decodeOutsideLiterals(query))
            rows = self._query(match.group(1), parsed, user)
        except ODataError as e:
            self._log.info(
                "fake balena API: 400 for {query}: {why}", query=query, why=e
            )
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain")
            return b"Malformed url"
        return self._json(request, 200, {"d": rows})

    @staticmethod
    def _json(request: Any, code: int, body: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode("utf-8")

    # Querying

    def _query(
        self,
        table: str,
        query: ParsedQuery,
        user: str | None,
        rows: Iterable[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        f = self.fixture
        candidates = [
            row
            for row in (f.tables[table].values() if rows is None else rows)
            if f.visible(table, row, user)
        ]
        if query.filter is not None:
            candidates = [
                row
                for row in candidates
                if self._eval(query.filter, table, row, {}, user) is True
            ]
        for field, descending in reversed(query.orderby):
            self._checkField(table, field)
            candidates.sort(
                key=lambda r: (r.get(field) is None, r.get(field)), reverse=descending
            )
        if query.top is not None:
            candidates = candidates[: query.top]
        return [self._render(table, row, query, user) for row in candidates]

    def _checkField(self, table: str, field: str) -> None:
        rows = self.fixture.tables[table].values()
        known = set(NAVIGATIONS[table]).union(*(row.keys() for row in rows))
        if rows and field not in known:
            raise ODataError(f"unknown field {table}.{field}")

    def _related(
        self, table: str, row: Mapping[str, Any], navigation: str, user: str | None
    ) -> tuple[str, list[dict[str, Any]], str]:
        if navigation not in NAVIGATIONS[table]:
            raise ODataError(f"unknown navigation {table}.{navigation}")
        target, kind, key = NAVIGATIONS[table][navigation]
        rows = self.fixture.tables[target]
        if kind == "one":
            related = rows.get(row.get(key))  # type: ignore[arg-type]
            found = [related] if related is not None else []
        else:
            found = [r for r in rows.values() if r.get(key) == row["id"]]
        return target, [r for r in found if self.fixture.visible(target, r, user)], kind

    def _render(
        self, table: str, row: Mapping[str, Any], query: ParsedQuery, user: str | None
    ) -> dict[str, Any]:
        fields = (
            query.select
            if query.select is not None
            else tuple(name for name in row if name not in NAVIGATIONS[table])
            + tuple(
                name
                for name, (_, kind, _) in NAVIGATIONS[table].items()
                if kind == "one"
            )
        )
        out: dict[str, Any] = {}
        for name in fields:
            if name in NAVIGATIONS[table]:
                target, kind, key = NAVIGATIONS[table][name]
                if kind == "many":
                    raise ODataError(f"cannot $select {name}; $expand it")
                value = row.get(key)
                out[name] = None if value is None else {"__id": value}
            elif name in row:
                out[name] = row[name]
            else:
                raise ODataError(f"unknown field {table}.{name}")
        for name, nested in query.expand:
            target, related, _ = self._related(table, row, name, user)
            out[name] = self._query(target, nested, user, related)
        return out

    def _eval(
        self,
        node: Any,
        table: str,
        row: Mapping[str, Any],
        scope: dict[str, tuple[str, Mapping[str, Any]]],
        user: str | None,
    ) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "and":
            return self._eval(node[1], table, row, scope, user) is True and (
                self._eval(node[2], table, row, scope, user) is True
            )
        if kind == "or":
            return self._eval(node[1], table, row, scope, user) is True or (
                self._eval(node[2], table, row, scope, user) is True
            )
        if kind == "not":
            return self._eval(node[1], table, row, scope, user) is not True
        if kind == "cmp":
            left = self._eval(node[2], table, row, scope, user)
            right = self._eval(node[3], table, row, scope, user)
            try:
                return _COMPARISONS[node[1]](left, right)
            except TypeError:
                raise ODataError("incomparable values") from None
        if kind == "call":
            args = [self._eval(a, table, row, scope, user) for a in node[2]]
            try:
                return _FUNCTIONS[node[1]](*args)
            except TypeError:
                raise ODataError(f"bad arguments to {node[1]}") from None
        if kind == "path":
            values = self._walk(node[1], table, row, scope, user)
            if isinstance(values, list):
                raise ODataError("a collection needs any() or all()")
            return values
        if kind == "lambda":
            _, quantifier, steps, variable, body = node
            found = self._walk(steps, table, row, scope, user)
            if not isinstance(found, list):
                raise ODataError("any() and all() need a collection")
            target, related = found[0], found[1]
            results = (
                self._eval(body, target, r, {**scope, variable: (target, r)}, user)
                is True
                for r in related
            )
            return any(results) if quantifier == "any" else all(results)
        raise ODataError("bad filter")

    def _walk(
        self,
        steps: tuple[str, ...],
        table: str,
        row: Mapping[str, Any] | None,
        scope: dict[str, tuple[str, Mapping[str, Any]]],
        user: str | None,
    ) -> Any:
        """
        Follow a path; a single value, or C{[table, rows]} when it ends on
        a collection.
        """
        if steps[0] in scope:
            table, row = scope[steps[0]]
            steps = steps[1:]
        for i, step in enumerate(steps):
            if row is None:
                return None
            last = i == len(steps) - 1
            if step in NAVIGATIONS[table]:
                target, related, kind = self._related(table, row, step, user)
                if kind == "many":
                    if not last:
                        raise ODataError("a collection needs any() or all()")
                    return [target, related]
                if last:
                    return row.get(NAVIGATIONS[table][step][2])
                table, row = target, (related[0] if related else None)
            elif step in row:
                if not last:
                    raise ODataError(f"{step} is not a navigation")
                return row[step]
            else:
                raise ODataError(f"unknown field {table}.{step}")
        return row["id"] if row is not None else None

    # Registry tokens

    def _token(self, request: Any, user: str | None) -> Any:
        """
        Registry tokens as balena's API issues them: C{{"token": ...}} only,
        C{aud} always the registry host, C{pull} granted on the
        repositories of images the user can see, and C{actions: []} for the
        rest.  Bad credentials get 401; none at all is anonymous.
        """
        if self.issuer is None:
            request.setResponseCode(404)
            return b"Not Found"
        if request.getHeader(b"authorization") and user is None:
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"text/plain")
            return b"Unauthorized"
        from regproxy.names.scope import Scope, parseScopes

        args = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        granted = []
        for scope in parseScopes(args.get("scope", [])):
            actions: tuple[str, ...] = ()
            if scope.resourceType != "repository":
                pass
            elif user in self.fixture.builders and self._isImage(scope.name):
                actions = tuple(a for a in scope.actions if a in ("pull", "push"))
            elif self._canPull(scope.name, user):
                actions = tuple(a for a in scope.actions if a == "pull")
            granted.append(
                Scope(scope.resourceType, scope.resourceClass, scope.name, actions)
            )
        issued = self.issuer.issue(user, self.fixture.registryHost, granted)
        return self._json(request, 200, {"token": issued.token})

    def _isImage(self, repository: str) -> bool:
        location = f"{self.fixture.registryHost}/{repository}"
        return any(
            image["is_stored_at__image_location"] == location
            for image in self.fixture.tables["image"].values()
        )

    def _canPull(self, repository: str, user: str | None) -> bool:
        location = f"{self.fixture.registryHost}/{repository}"
        return any(
            image["is_stored_at__image_location"] == location
            and self.fixture.visible("image", image, user)
            for image in self.fixture.tables["image"].values()
        )
