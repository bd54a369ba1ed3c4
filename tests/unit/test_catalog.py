# -*- test-case-name: tests.unit.test_catalog -*-
"""
Tests for L{regproxy.proxy.catalog}: C{/v2/_catalog} in front-door mode,
through the whole site, in front of an in-memory upstream that knows only
regproxy's service account.
"""

from __future__ import annotations

import json
from typing import cast
from urllib.parse import parse_qsl, urlsplit

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

import regproxy.proxy.catalog
from regproxy.names.reference import isRepositoryName
from regproxy.proxy.catalog import CATALOG_PATH, _nextPath, _repositories
from regproxy.server.errors import RegistryError
from regproxy.server.pagination import pageOf
from tests.unit.test_userauth import RULES, SiteTestCase, basic, errorCodes

CATALOG_RULES = (
    RULES
    + """
[[rule]]
users = ["alice", "bob"]
catalog = true

[[rule]]
users = ["carol"]
repositories = ["**"]
actions = ["pull"]
"""
)
REPOSITORIES = ["team/app", "team/b", "team/c", "public/tool", "other/app"]


class CatalogTests(SiteTestCase):
    """
    Users whose rules allow it list the repositories they may pull.
    """

    def setUp(self) -> None:
        super().setUp()
        with open(self.access, "w") as f:
            f.write(CATALOG_RULES)
        for repository in REPOSITORIES:
            self.registry.addImage(repository)
        self.site = self.makeSite()

    def catalog(self, user: str | None, query: bytes = b""):
        credentials = None
        if user is not None:
            credentials = basic(user, {"alice": "wonderland", "bob": "builder"}[user])
        token = self.token(["registry:catalog:*"], credentials)
        return self.get(b"/v2/_catalog" + query, b"Bearer " + token.encode())

    def test_filteredByRules(self) -> None:
        """
        alice sees what she may pull (team/**, public/*), bob his (team/app
        and the anonymous public/*), neither other/app; the upstream was
        asked with the service account.
        """
        response = self.catalog("alice")
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            json.loads(response.body),
            {"repositories": ["public/tool", "team/app", "team/b", "team/c"]},
        )
        self.assertEqual(
            response.header(b"docker-distribution-api-version"), b"registry/2.0"
        )
        response = self.catalog("bob")
        self.assertEqual(
            json.loads(response.body)["repositories"], ["public/tool", "team/app"]
        )
        asked = [r for r in self.registry.received if b"_catalog" in r.uri]
        self.assertEqual({r.user for r in asked}, {"svc"})

    def test_basicStraightToCatalog(self) -> None:
        """
        Basic credentials on the request itself work as well.
        """
        response = self.get(b"/v2/_catalog", basic("alice", "wonderland"))
        self.assertEqual(response.status, 200, response.body)

    def test_notAllowed(self) -> None:
        """
        Without a catalog rule, or anonymously, the token does not grant the
        catalog: a 401 with our challenge for the catalog scope.
        """
        self.patch(regproxy.proxy.catalog, "_PAGE", 2)
        with open(self.access, "w") as f:
            f.write(RULES)
        self.site = self.makeSite()
        for user in ("alice", None):
            response = self.catalog(user)
            self.assertEqual(response.status, 401, response.body)
            self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
            self.assertIn(
                b'scope="registry:catalog:*"', response.header(b"www-authenticate")
            )

    def test_paginated(self) -> None:
        """
        C{n} and C{last} page the filtered list, with a C{Link} to the next
        page as distribution sends; the upstream's own pages are followed.
        """
        self.patch(regproxy.proxy.catalog, "_PAGE", 2)
        response = self.catalog("alice", b"?n=3")
        self.assertEqual(
            json.loads(response.body)["repositories"],
            ["public/tool", "team/app", "team/b"],
        )
        self.assertEqual(
            response.header(b"link"),
            b'</v2/_catalog?n=3&last=team%2Fb>; rel="next"',
        )
        response = self.catalog("alice", b"?n=3&last=team%2Fb")
        self.assertEqual(json.loads(response.body)["repositories"], ["team/c"])
        self.assertIsNone(response.header(b"link"))

    def test_badPageSize(self) -> None:
        """
        A C{n} that is not a number is a 400 in registry JSON.
        """
        response = self.catalog("alice", b"?n=many")
        self.assertEqual(response.status, 400)
        self.assertEqual(errorCodes(response), ["PAGINATION_NUMBER_INVALID"])

    def test_otherPathsUnchanged(self) -> None:
        """
        Everything else under C{/v2} still reaches the registry resource.
        """
        token = self.token(["repository:team/app:pull"], basic("alice", "wonderland"))
        response = self.manifest("team/app", b"Bearer " + token.encode())
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(self.get(b"/v2/").status, 401)
        self.assertEqual(self.get(b"/v2").status, 401)


class ParsingTests(SynchronousTestCase):
    """
    What the upstream sends for its catalog is parsed without crashing, and
    its pages are followed only on the upstream's own catalog path.
    """

    @given(st.lists(st.binary(max_size=80), max_size=3))
    def test_anyLink(self, values: list[bytes]) -> None:
        """
        Any C{Link} values give no next page or one at C{/v2/_catalog}.
        """
        found = _nextPath(values)
        self.assertTrue(found is None or found.startswith(CATALOG_PATH))

    def test_linkElsewhere(self) -> None:
        """
        A next page on another origin or path is not followed; one on the
        catalog keeps its query.
        """
        self.assertIsNone(_nextPath([b'<http://evil.example/x?n=1>; rel="next"']))
        self.assertEqual(
            _nextPath([b'<http://up.example/v2/_catalog?last=a&n=2>; rel="next"']),
            "/v2/_catalog?last=a&n=2",
        )

    @given(st.binary(max_size=200) | st.text(max_size=50).map(str.encode))
    def test_anyBody(self, body: bytes) -> None:
        """
        Any body is a list of valid repository names, or a 502.
        """
        try:
            names = _repositories(body)
        except RegistryError as e:
            self.assertEqual(e.status, 502)
        else:
            self.assertTrue(all(isRepositoryName(name) for name in names))


class PageTests(SynchronousTestCase):
    """
    L{pageOf} gives every name exactly once, page by page.
    """

    @given(
        st.lists(st.from_regex(r"[a-z]{1,4}(/[a-z]{1,3})?", fullmatch=True)),
        st.integers(min_value=1, max_value=5),
    )
    def test_pagesCoverAll(self, names: list[str], n: int) -> None:
        """
        Following C{Link} from the first page visits the sorted names once.
        """
        seen: list[str] = []
        query = f"?n={n}"
        for _ in range(len(names) + 2):
            request = DummyRequest([b""])
            request.args = {k.encode(): [v.encode()] for k, v in parse_qsl(query[1:])}
            seen += pageOf(cast(Request, request), names, CATALOG_PATH)
            link = request.responseHeaders.getRawHeaders(b"link")
            if not link:
                break
            query = "?" + urlsplit(link[0].decode()[1:].split(">")[0]).query
        self.assertEqual(seen, sorted(set(names)))
