# -*- test-case-name: tests.unit.test_catalog -*-
"""
C{/v2/_catalog} in front-door mode (regproxy's own users and rules): the
upstream's repositories that the client may pull, for clients whose rules
say C{catalog = true}.

The upstream is asked with regproxy's service credentials, page by page,
and the list is filtered through the access rules before the client's own
C{n} / C{last} paging, so a client never learns a name it could not pull.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from regproxy.auth.broker import Broker
from regproxy.auth.credentials import BasicCredentials
from regproxy.names.reference import isRepositoryName
from regproxy.names.scope import Scope
from regproxy.proxy.upstreamauth import UpstreamAuthenticator
from regproxy.server.errors import (
    API_VERSION,
    API_VERSION_HEADER,
    methodNotAllowed,
    unavailable,
)
from regproxy.server.pagination import pageOf
from regproxy.server.rendering import renderLater
from regproxy.server.urls import Origin

CATALOG_SCOPE = Scope("registry", None, "catalog", ("*",))
CATALOG_PATH = "/v2/_catalog"
# The upstream is read this many names a page, for at most this many pages.
_PAGE = 1000
_MAX_PAGES = 100
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class CatalogRoot(Resource):
    """
    C{/v2}: C{_catalog} here, everything else to the registry resource
    (a leaf that reads the whole path itself).
    """

    def __init__(self, registry: Resource, catalog: Resource) -> None:
        super().__init__()
        self._registry = registry
        self._catalog = catalog

    def getChildWithDefault(self, name: bytes, request: Request) -> Resource:
        if name == b"_catalog" and not request.postpath:  # type: ignore[attr-defined]
            return self._catalog
        return self._registry

    def render(self, request: Request) -> Any:
        return self._registry.render(request)


class CatalogResource(Resource):
    """
    C{GET /v2/_catalog}: the repositories the client may pull.
    """

    isLeaf = True

    def __init__(self, broker: Broker, upstream: UpstreamCatalog) -> None:
        super().__init__()
        self._broker = broker
        self._upstream = upstream

    def render(self, request: Request) -> object:
        request.responseHeaders.setRawHeaders(API_VERSION_HEADER, [API_VERSION])
        if request.method not in (b"GET", b"HEAD"):
            methodNotAllowed(request, (b"GET", b"HEAD"))
            return NOT_DONE_YET
        return renderLater(request, self._serve(request))

    async def _serve(self, request: Request) -> None:
        account = await self._broker.authorizeScope(request, CATALOG_SCOPE)
        backend = self._broker.backend
        names = await self._upstream.names(backend.upstreamCredentials(account))
        wanted = tuple(Scope("repository", None, name, ("pull",)) for name in names)
        visible = [scope.name for scope in backend.grant(account, wanted)]
        page = pageOf(request, visible, CATALOG_PATH)
        body = json.dumps({"repositories": page}).encode("utf-8")
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()


@attrs.frozen
class UpstreamCatalog:
    """
    The upstream's own catalog, read whole.
    """

    authenticator: UpstreamAuthenticator
    agent: IAgent
    upstream: Origin
    clock: IReactorTime
    timeout: float = 30.0

    async def names(self, credentials: BasicCredentials | None) -> list[str]:
        """
        Every repository the upstream lists to C{credentials}, following
        its C{Link} pages (on the upstream only, never to another origin).
        """
        authorization = await self.authenticator.authorization(
            credentials, "catalog", ("*",), resourceType="registry"
        )
        headers = Headers()
        if authorization is not None:
            headers.setRawHeaders(b"authorization", [authorization])
        names: list[str] = []
        path: str | None = f"{CATALOG_PATH}?n={_PAGE}"
        for _ in range(_MAX_PAGES):
            if path is None:
                break
            response = await self.agent.request(
                b"GET", self.upstream.base + path.encode("utf-8"), headers
            ).addTimeout(self.timeout, self.clock)
            body = await readBody(response)
            if response.code != 200:
                raise unavailable(
                    f"the upstream registry answered {response.code} for its catalog"
                )
            names.extend(_repositories(body))
            path = _nextPath(response.headers.getRawHeaders(b"link", []))
        return names


def _repositories(body: bytes) -> list[str]:
    try:
        listed = json.loads(body).get("repositories")
    except (ValueError, AttributeError):
        raise unavailable("the upstream registry's catalog is not JSON") from None
    if not isinstance(listed, list):
        return []
    return [name for name in listed if isinstance(name, str) and isRepositoryName(name)]


def _nextPath(links: list[bytes]) -> str | None:
    for value in links:
        match = _NEXT.search(value.decode("latin-1"))
        if match is None:
            continue
        url = urlsplit(match.group(1))
        if url.path != CATALOG_PATH:
            return None
        return url.path + ("?" + url.query if url.query else "")
    return None
