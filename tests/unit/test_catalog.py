# -*- test-case-name: tests.unit.test_catalog -*-
"""
Tests for L{regproxy.proxy.catalog}: C{/v2/_catalog} in front-door mode,
through the whole site, in front of an in-memory upstream that knows only
regproxy's service account.
"""

from __future__ import annotations

import json

import regproxy.proxy.catalog
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
