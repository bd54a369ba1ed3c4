"""
Tests for L{regproxy.testing.fakebalena}: the fake must refuse what the real
balena API refuses, or the resolver's tests prove nothing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regproxy.auth.issuerkeys import generateIssuerKeyAndCertificate
from regproxy.auth.jwt import TokenIssuer, TokenVerifier
from regproxy.resolve.odata import quoteString
from regproxy.testing.fakebalena import (
    ALICE_KEY,
    BOB_KEY,
    BUILDER_KEY,
    FakeBalenaAPI,
    ODataError,
    _decodeOutsideLiterals,
    parseOptions,
)

BASE = "http://api.example/"
PUBLIC = "slug%20eq%20'acme%2Fpublic-app'"
PRIVATE = "slug%20eq%20'acme%2Fprivate-app'"


class FakeAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.api = FakeBalenaAPI()
        # StubTreq makes its request methods at run time, from treq's API.
        self.stub: Any = StubTreq(self.api)

    def get(
        self, path: str, key: str | None = None, basic: str | None = None
    ) -> tuple[int, Any]:
        headers = {}
        if key is not None:
            headers["Authorization"] = "Bearer " + key
        if basic is not None:
            headers["Authorization"] = (
                "Basic " + base64.b64encode(basic.encode()).decode()
            )
        d = self.stub.get(BASE + path, headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        try:
            return response.code, json.loads(body)
        except ValueError:
            return response.code, body

    def test_shape(self) -> None:
        """
        Answers are C{{"d": [...]}}; an expanded single navigation is a list
        of one row, an unexpanded one C{{"__id": n}}.
        """
        code, body = self.get(
            "v6/release?$select=id,semver,belongs_to__application"
            f"&$filter=belongs_to__application/{PUBLIC}%20and%20revision%20eq%202"
            "&$expand=contains__image($select=id&$expand=image($select=status))"
        )
        self.assertEqual(code, 200)
        [release] = body["d"]
        self.assertEqual(release["semver"], "1.2.3")
        self.assertEqual(set(release["belongs_to__application"]), {"__id"})
        self.assertEqual(
            release["contains__image"][0]["image"], [{"status": "success"}]
        )

    def test_privateLooksMissing(self) -> None:
        """
        A private fleet without a member's key is C{200 {"d": []}}, like a
        fleet that does not exist; with the key, it is there.
        """
        missing = self.get(
            "v6/application?$select=id&$filter=slug%20eq%20'acme%2Fnope'"
        )
        self.assertEqual(missing, (200, {"d": []}))
        for key in (None, BOB_KEY, "wrong-key"):
            self.assertEqual(
                self.get(f"v6/application?$select=id&$filter={PRIVATE}", key), missing
            )
        code, body = self.get(
            f"v6/application?$select=slug&$filter={PRIVATE}", ALICE_KEY
        )
        self.assertEqual(body, {"d": [{"slug": "acme/private-app"}]})

    def test_privateHiddenEverywhere(self) -> None:
        """
        The releases and images of a private fleet are hidden too.
        """
        for resource in ("release", "image", "service"):
            code, body = self.get(f"v6/{resource}?$select=id")
            code, mine = self.get(f"v6/{resource}?$select=id", ALICE_KEY)
            self.assertLess(len(body["d"]), len(mine["d"]), resource)

    def test_encodedSyntaxRejected(self) -> None:
        """
        C{, / ( ) : ' $} percent-encoded outside a literal: 400 Malformed url.
        """
        good = f"v6/application?$select=id,slug&$filter={PUBLIC}"
        self.assertEqual(self.get(good)[0], 200)
        for bad in (
            good.replace("$select", "%24select"),
            good.replace("id,slug", "id%2Cslug"),
            good.replace("'acme%2Fpublic-app'", "%27acme%2Fpublic-app%27"),
            "v6/application?$filter=startswith%28slug,'acme'%29",
        ):
            self.assertEqual(self.get(bad), (400, b"Malformed url"), bad)

    def test_badQueries(self) -> None:
        for bad in (
            "v6/application?$select=nope",
            "v6/application?$filter=slug%20eq",
            "v6/application?$filter=owns__release%20eq%201",
            "v6/application?$expand=nope",
            "v6/application?$top=x",
        ):
            self.assertEqual(self.get(bad)[0], 400, bad)

    def test_unknownResource(self) -> None:
        self.assertEqual(self.get("v6/device")[0], 404)

    def test_lambdaAndFunctions(self) -> None:
        code, body = self.get(
            "v6/application?$select=slug&$filter=owns__release/any(r:"
            "r/contains__image/any(ri:ri/image/is_a_build_of__service/service_name"
            "%20eq%20'frontend'))%20or%20startswith(slug,'acme%2Fem')&$orderby=slug%20desc"
        )
        self.assertEqual(body["d"], [{"slug": "acme/multi"}, {"slug": "acme/empty"}])

    def test_fixtureHelpers(self) -> None:
        """
        A test can list every image to push and record real digests, which
        the API then serves.
        """
        fixture = self.api.fixture
        images = fixture.allImages()
        self.assertIn(
            (
                "acme/multi",
                "1.0.0",
                "backend",
                fixture.repository("acme/multi", "1.0.0", "backend"),
            ),
            images,
        )
        self.assertEqual(len({repository for *_, repository in images}), len(images))
        fixture.setContentHash("acme/public-app", "2.0.0", "sha256:" + "0" * 64)
        code, body = self.get(
            "v6/image?$select=content_hash&$filter=is_part_of__release/any(ri:"
            "ri/is_part_of__release/raw_version%20eq%20'2.0.0')"
        )
        self.assertEqual(body["d"], [{"content_hash": "sha256:" + "0" * 64}])

    def test_callsCounted(self) -> None:
        self.get("ping")
        self.get(f"v6/application?$filter={PRIVATE}", ALICE_KEY)
        self.assertEqual(
            [(c.path, c.user) for c in self.api.calls][1:],
            [("/v6/application", "alice")],
        )
        self.assertEqual(len(self.api.apiCalls), 1)

    def test_stopped(self) -> None:
        self.api.stop("503")
        self.assertEqual(self.get("v6/application")[0], 503)
        self.api.stop("drop")
        d = self.stub.get(BASE + "v6/application")
        self.stub.flush()
        self.failureResultOf(d)
        self.api.stop("hang")
        d = self.stub.get(BASE + "v6/application")
        self.stub.flush()
        self.assertNoResult(d)
        self.api.start()
        self.assertEqual(self.get("v6/application")[0], 200)

    @given(st.text(max_size=20))
    def test_anyLiteralMatches(self, value: str) -> None:
        """
        Whatever a slug holds, quoted as the resolver quotes it, the fake
        reads it back.
        """
        text = _decodeOutsideLiterals(f"$filter=slug%20eq%20{quoteString(value)}")
        query = parseOptions(text)
        self.assertEqual(
            query.filter, ("cmp", "eq", ("path", ("slug",)), ("lit", value))
        )

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=60))
    def test_parserNeverCrashes(self, text: str) -> None:
        try:
            parseOptions(_decodeOutsideLiterals(text))
        except ODataError:
            pass


class TokenTests(SynchronousTestCase):
    """
    C{/auth/v1/token} issues registry tokens as balena's API does.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        key, certificate = generateIssuerKeyAndCertificate("fake-balena")
        self.issuer = TokenIssuer("fake-balena", key, [certificate], self.clock)
        self.api = FakeBalenaAPI(issuer=self.issuer)
        # StubTreq makes its request methods at run time, from treq's API.
        self.stub: Any = StubTreq(self.api)
        self.verifier = TokenVerifier.forKeys(
            "fake-balena", "registry2.balena-cloud.com", [key.public_key()], self.clock
        )
        fixture = self.api.fixture
        self.private = fixture.repository("acme/private-app", "1.0.0")
        self.public = fixture.repository("acme/public-app", "2.0.0")

    def token(self, scopes: list[str], basic: str | None = None) -> tuple[int, Any]:
        headers = {}
        if basic is not None:
            headers["Authorization"] = (
                "Basic " + base64.b64encode(basic.encode()).decode()
            )
        query = "&".join(["service=whatever"] + [f"scope={s}" for s in scopes])
        d = self.stub.get(BASE + "auth/v1/token?" + query, headers=headers)
        self.stub.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        return response.code, json.loads(body) if response.code == 200 else body

    def access(
        self, scopes: list[str], basic: str | None = None
    ) -> dict[str, list[str]]:
        code, body = self.token(scopes, basic)
        self.assertEqual((code, list(body)), (200, ["token"]))
        claims = self.verifier.verify(body["token"])
        self.assertEqual(claims["aud"], "registry2.balena-cloud.com")
        return {entry["name"]: entry["actions"] for entry in claims["access"]}

    def test_perUser(self) -> None:
        """
        Members pull their private fleet's images; others, and anonymous
        clients, get C{actions: []} for them.  Nobody gets push.
        """
        scopes = [
            f"repository:{self.private}:pull,push",
            f"repository:{self.public}:pull",
        ]
        self.assertEqual(
            self.access(scopes, f"alice:{ALICE_KEY}"),
            {self.private: ["pull"], self.public: ["pull"]},
        )
        self.assertEqual(
            self.access(scopes, f"bob:{BOB_KEY}"),
            {self.private: [], self.public: ["pull"]},
        )
        self.assertEqual(self.access(scopes), {self.private: [], self.public: ["pull"]})
        self.assertEqual(
            self.access(scopes, "alice:alice-password"),
            {self.private: ["pull"], self.public: ["pull"]},
        )

    def test_builderPushes(self) -> None:
        """
        The builder may push and pull every fixture image, and nothing else.
        """
        scopes = [
            f"repository:{self.private}:push,pull",
            "repository:v2/nothing:pull,push",
        ]
        self.assertEqual(
            self.access(scopes, f"builder:{BUILDER_KEY}"),
            {self.private: ["push", "pull"], "v2/nothing": []},
        )

    def test_aliasGetsNothing(self) -> None:
        self.assertEqual(
            self.access(["repository:acme/multi:pull"]), {"acme/multi": []}
        )

    def test_wrongKey(self) -> None:
        self.assertEqual(self.token([], "alice:wrong")[0], 401)

    def test_noIssuer(self) -> None:
        api = FakeBalenaAPI()
        stub: Any = StubTreq(api)
        d = stub.get(BASE + "auth/v1/token")
        self.assertEqual(self.successResultOf(d).code, 404)
