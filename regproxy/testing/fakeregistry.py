# -*- test-case-name: tests.unit.test_broker -*-
"""
An in-memory upstream registry for the broker's tests.

It can be open, protected by C{Basic} logins, or protected by C{Bearer}
tokens from its own little token service (which checks C{Basic}
credentials and grants per repository, as a distribution registry's token
server does).  It records every request it gets, so tests can assert what
regproxy sent upstream on a client's behalf.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request

from regproxy.names.scope import parseScopes

UPSTREAM = "http://upstream.example:5000"
TOKEN_PATH = b"/auth/token"
TOKEN_REALM = "http://auth.example" + TOKEN_PATH.decode()
TOKEN_SERVICE = "upstream-registry"
OPEN = "open"
BASIC = "basic"
BEARER = "bearer"

_PATH = re.compile(
    r"/v2/(?P<name>.+?)/(?:"
    r"manifests/(?P<manifest>[^/]+)|"
    r"blobs/uploads/(?P<upload>[^/]*)|"
    r"blobs/(?P<blob>[^/]+)|"
    r"(?P<tags>tags/list))\Z"
)


def digestOf(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def manifestFor(repository: str) -> bytes:
    """
    A small image manifest that names one layer, distinct per repository.
    """
    layer = layerFor(repository)
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digestOf(b"{}"),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digestOf(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode("utf-8")


def layerFor(repository: str) -> bytes:
    return b"layer of " + repository.encode("utf-8")


def basicUser(header: bytes | None) -> tuple[str, str] | None:
    """
    The user name and password of a C{Basic} header, or L{None}.
    """
    if not header or header[:6].lower() != b"basic ":
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except ValueError:
        return None
    user, colon, password = text.partition(":")
    return (user, password) if colon else None


@attrs.frozen
class Received:
    """
    One request the fake got.

    @ivar user: Who it authenticated as (L{None}: anonymous or refused).
    """

    method: bytes
    uri: bytes
    headers: Mapping[bytes, list[bytes]]
    body: bytes
    user: str | None

    @property
    def path(self) -> bytes:
        return self.uri.partition(b"?")[0]

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


@attrs.define
class _Grant:
    user: str | None
    access: dict[str, tuple[str, ...]]
    expires: float


class FakeRegistry(Resource):
    """
    The fake upstream: C{/v2/...} and, in Bearer mode, its token service at
    L{TOKEN_REALM}'s path.

    @ivar mode: L{OPEN}, L{BASIC} or L{BEARER}.
    @ivar users: User name to password.
    @ivar grants: Who may do what: user name (L{None} for anonymous) to
        repository (C{"*"} for all) to actions.  Open mode ignores it.
    @ivar tokenLifetime: The C{expires_in} its token service answers.
    @ivar received: Registry requests, in order.
    @ivar tokenRequests: Token service requests, in order.
    """

    isLeaf = True

    def __init__(
        self,
        mode: str = OPEN,
        users: Mapping[str, str] | None = None,
        grants: Mapping[str | None, Mapping[str, tuple[str, ...]]] | None = None,
        clock: IReactorTime | None = None,
        tokenLifetime: int = 300,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.users = dict(users or {})
        self.grants = {k: dict(v) for k, v in (grants or {}).items()}
        self.clock = clock
        self.tokenLifetime = tokenLifetime
        self.received: list[Received] = []
        self.tokenRequests: list[Received] = []
        self.tokens: dict[str, _Grant] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}

    # Content

    def addImage(self, repository: str, tag: str = "latest") -> bytes:
        """
        Store an image (manifest and layer) in C{repository} under C{tag};
        return the manifest.
        """
        manifest = manifestFor(repository)
        self.manifests[(repository, tag)] = manifest
        self.manifests[(repository, digestOf(manifest))] = manifest
        layer = layerFor(repository)
        self.blobs[(repository, digestOf(layer))] = layer
        return manifest

    # Access

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else 0.0

    def actionsFor(self, user: str | None, repository: str) -> tuple[str, ...]:
        table = self.grants.get(user, {})
        return tuple(table.get(repository, ())) + tuple(table.get("*", ()))

    def _checkBasic(self, header: bytes | None) -> tuple[bool, str | None]:
        """
        Whether the C{Authorization} header is acceptable, and who it names.
        No header is acceptable and anonymous.
        """
        if not header:
            return True, None
        found = basicUser(header)
        if found is None or self.users.get(found[0]) != found[1]:
            return False, None
        return True, found[0]

    def challenge(self, scope: str | None = None, error: str | None = None) -> bytes:
        if self.mode == BASIC:
            return b'Basic realm="fake registry"'
        value = f'Bearer realm="{TOKEN_REALM}",service="{TOKEN_SERVICE}"'
        if scope is not None:
            value += f',scope="{scope}"'
        if error is not None:
            value += f',error="{error}"'
        return value.encode("utf-8")

    def _authorize(
        self, request: Request, repository: str | None, actions: tuple[str, ...]
    ) -> tuple[bool, str | None]:
        """
        Whether C{request} may do C{actions} on C{repository} (L{None}: the
        C{/v2/} ping, which needs a valid login only), and who it is.
        """
        if self.mode == OPEN:
            return True, None
        header = request.getHeader(b"authorization")
        if self.mode == BASIC:
            good, user = self._checkBasic(header)
            if not good or user is None:
                return False, None
            if repository is None:
                return True, user
            granted = self.actionsFor(user, repository)
            return all(a in granted for a in actions), user
        if not header or header[:7].lower() != b"bearer ":
            return False, None
        grant = self.tokens.get(header[7:].strip().decode("latin-1"))
        if grant is None or grant.expires <= self._now():
            return False, None
        if repository is None:
            return True, grant.user
        granted = grant.access.get(repository, ())
        return all(a in granted for a in actions), grant.user

    # HTTP

    def render(self, request: Request) -> bytes:
        headers = {
            name.lower(): list(values)
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read() if request.content is not None else b""
        if request.path == TOKEN_PATH:
            return self._token(request, headers, body)
        return self._registry(request, headers, body)

    def _json(self, request: Request, code: int, value: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(value).encode("utf-8")

    def _token(
        self, request: Request, headers: dict[bytes, list[bytes]], body: bytes
    ) -> bytes:
        good, user = self._checkBasic(request.getHeader(b"authorization"))
        self.tokenRequests.append(
            Received(request.method, request.uri, headers, body, user)
        )
        if self.mode != BEARER or request.method != b"GET":
            request.setResponseCode(404)
            return b"not found"
        if not good:
            return self._json(
                request,
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "bad login"}]},
            )
        query = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        access: dict[str, tuple[str, ...]] = {}
        for scope in parseScopes(query.get("scope", [])):
            if scope.resourceType == "repository":
                allowed = self.actionsFor(user, scope.name)
                access[scope.name] = tuple(a for a in scope.actions if a in allowed)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = _Grant(user, access, self._now() + self.tokenLifetime)
        return self._json(
            request, 200, {"token": token, "expires_in": self.tokenLifetime}
        )

    def _catalog(self, request: Request) -> bytes:
        """
        Every repository, paged with C{n} and C{last} as distribution does.
        """
        query = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        names = sorted({repo for (repo, _) in self.manifests})
        names = [n for n in names if n > query.get("last", [""])[0]]
        count = int(query.get("n", ["100"])[0])
        if len(names) > count:
            names = names[:count]
            link = f'</v2/_catalog?last={names[-1]}&n={count}>; rel="next"'
            request.setHeader(b"Link", link.encode("utf-8"))
        return self._json(request, 200, {"repositories": names})

    def _registry(
        self, request: Request, headers: dict[bytes, list[bytes]], body: bytes
    ) -> bytes:
        request.setHeader(b"Docker-Distribution-Api-Version", b"registry/2.0")
        path = request.path.decode("utf-8")
        match = _PATH.match(path)
        repository = match.group("name") if match else None
        if request.method in (b"GET", b"HEAD"):
            actions: tuple[str, ...] = ("pull",)
        elif request.method == b"DELETE":
            actions = ("delete",)
        else:
            actions = ("pull", "push")
        allowed, user = self._authorize(request, repository, actions)
        self.received.append(Received(request.method, request.uri, headers, body, user))
        if path == "/v2/" or path == "/v2":
            if not allowed:
                request.setHeader(b"WWW-Authenticate", self.challenge())
                return self._error(
                    request, 401, "UNAUTHORIZED", "authentication required"
                )
            return self._json(request, 200, {})
        if path == "/v2/_catalog" and allowed:
            return self._catalog(request)
        if match is None or repository is None:
            return self._error(request, 404, "NOT_FOUND", "no such path")
        if not allowed:
            scope = f"repository:{repository}:{','.join(actions)}"
            error = (
                "insufficient_scope" if request.getHeader(b"authorization") else None
            )
            request.setHeader(b"WWW-Authenticate", self.challenge(scope, error))
            return self._error(request, 401, "UNAUTHORIZED", "authentication required")
        if match.group("manifest") is not None:
            return self._manifest(request, repository, match.group("manifest"), body)
        if match.group("blob") is not None:
            content = self.blobs.get((repository, match.group("blob")))
            if content is None:
                return self._error(request, 404, "BLOB_UNKNOWN", "blob unknown")
            request.setHeader(b"Content-Type", b"application/octet-stream")
            request.setHeader(b"Docker-Content-Digest", match.group("blob").encode())
            return b"" if request.method == b"HEAD" else content
        if match.group("upload") is not None:
            mounted = self._mount(request, repository)
            if mounted is not None:
                return mounted
            request.setResponseCode(202)
            location = (
                f"{UPSTREAM}/v2/{repository}/blobs/uploads/u-1?_state=a%2Fb%3D%3D"
            )
            request.setHeader(b"Location", location.encode("utf-8"))
            request.setHeader(b"Docker-Upload-UUID", b"u-1")
            request.setHeader(b"Content-Length", b"0")
            return b""
        tags = sorted(
            ref
            for (repo, ref) in self.manifests
            if repo == repository and ":" not in ref
        )
        if not tags:
            return self._error(
                request, 404, "NAME_UNKNOWN", "repository name not known"
            )
        return self._json(request, 200, {"name": repository, "tags": tags})

    def _mount(self, request: Request, repository: str) -> bytes | None:
        """
        A cross-repository mount (C{POST ...?mount=<digest>&from=<repo>}):
        201 when the caller may pull C{from} and the blob is there, as
        distribution does; L{None} to start an ordinary upload instead.
        """
        query = parse_qs(request.uri.decode("latin-1").partition("?")[2])
        digest = query.get("mount", [None])[-1]
        source = query.get("from", [None])[-1]
        if request.method != b"POST" or digest is None or source is None:
            return None
        allowed, _ = self._authorize(request, source, ("pull",))
        content = self.blobs.get((source, digest))
        if not allowed or content is None:
            return None
        self.blobs[(repository, digest)] = content
        request.setResponseCode(201)
        location = f"{UPSTREAM}/v2/{repository}/blobs/{digest}"
        request.setHeader(b"Location", location.encode("utf-8"))
        request.setHeader(b"Docker-Content-Digest", digest.encode("utf-8"))
        request.setHeader(b"Content-Length", b"0")
        return b""

    def _manifest(
        self, request: Request, repository: str, reference: str, body: bytes
    ) -> bytes:
        if request.method == b"DELETE":
            content = self.manifests.get((repository, reference))
            if content is None:
                return self._error(request, 404, "MANIFEST_UNKNOWN", "manifest unknown")
            for key in [k for k, v in self.manifests.items() if v == content]:
                if key[0] == repository:
                    del self.manifests[key]
            request.setResponseCode(202)
            return b""
        if request.method == b"PUT":
            self.manifests[(repository, reference)] = body
            request.setResponseCode(201)
            request.setHeader(
                b"Location",
                f"{UPSTREAM}/v2/{repository}/manifests/{digestOf(body)}".encode(),
            )
            request.setHeader(b"Docker-Content-Digest", digestOf(body).encode())
            return b""
        content = self.manifests.get((repository, reference))
        if content is None:
            return self._error(request, 404, "MANIFEST_UNKNOWN", "manifest unknown")
        request.setHeader(
            b"Content-Type", b"application/vnd.oci.image.manifest.v1+json"
        )
        request.setHeader(b"Docker-Content-Digest", digestOf(content).encode())
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % len(content))
            return b""
        return content

    def _error(
        self, request: Request, code: int, errorCode: str, message: str
    ) -> bytes:
        return self._json(
            request, code, {"errors": [{"code": errorCode, "message": message}]}
        )
