"""
Tests for L{regproxy.names.challenge}: the C{WWW-Authenticate} headers we read
from registries and the ones we write for clients.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regproxy.names.challenge import (
    Challenge,
    ChallengeParseError,
    bearer,
    parseChallenges,
    serializeChallenges,
)
from regproxy.testing.strategies import (
    challengeLikeText,
    challengeLists,
    challenges,
    paramValues,
)

_examples = settings(max_examples=200, deadline=None)


class RegistryChallengeTests(SynchronousTestCase):
    """
    Challenges as real registries send them.
    """

    def test_dockerHub(self) -> None:
        """
        Docker Hub's Bearer challenge gives its realm, service and scope.
        """
        [challenge] = parseChallenges(
            'Bearer realm="https://auth.docker.io/token",'
            'service="registry.docker.io",'
            'scope="repository:library/alpine:pull"'
        )
        self.assertEqual(challenge.scheme, "Bearer")
        self.assertEqual(
            challenge.params,
            (
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:library/alpine:pull"),
            ),
        )
        self.assertIsNone(challenge.token68)

    def test_distributionBasic(self) -> None:
        """
        The distribution registry's htpasswd challenge is Basic with a realm.
        """
        self.assertEqual(
            parseChallenges('Basic realm="Registry Realm"'),
            [Challenge("Basic", (("realm", "Registry Realm"),))],
        )

    def test_balenaBearer(self) -> None:
        """
        balenaCloud's registry challenge, with the realm on the API host.
        """
        [challenge] = parseChallenges(
            'Bearer realm="https://api.balena-cloud.com/auth/v1/token",'
            'service="registry2.balena-cloud.com"'
        )
        self.assertEqual(
            challenge.get("realm"), "https://api.balena-cloud.com/auth/v1/token"
        )
        self.assertEqual(challenge.get("service"), "registry2.balena-cloud.com")

    def test_severalChallenges(self) -> None:
        """
        One header can hold several challenges; each keeps its own params.
        """
        self.assertEqual(
            parseChallenges(
                'Basic realm="Registry Realm", '
                'Bearer realm="https://auth.example/token",service="registry",'
                " Negotiate"
            ),
            [
                Challenge("Basic", (("realm", "Registry Realm"),)),
                Challenge(
                    "Bearer",
                    (("realm", "https://auth.example/token"), ("service", "registry")),
                ),
                Challenge("Negotiate"),
            ],
        )

    def test_quotedComma(self) -> None:
        """
        A comma inside a quoted value belongs to the value, not to the list:
        a scope with two actions stays one parameter.
        """
        [challenge] = parseChallenges(
            'Bearer realm="https://a.example/token",'
            'scope="repository:org/app:pull,push"'
        )
        self.assertEqual(challenge.get("scope"), "repository:org/app:pull,push")
        self.assertEqual(len(challenge.params), 2)

    def test_escapedQuotes(self) -> None:
        """
        Backslash escapes inside a quoted value give the escaped character.
        """
        [challenge] = parseChallenges(r'Basic realm="say \"hi\" to C:\\reg"')
        self.assertEqual(challenge.get("realm"), 'say "hi" to C:\\reg')

    def test_token68(self) -> None:
        """
        A scheme followed by a token68 (padding included) keeps it whole.
        """
        self.assertEqual(
            parseChallenges("Negotiate abc=="),
            [Challenge("Negotiate", (), "abc==")],
        )

    def test_token68ThenParams(self) -> None:
        """
        A token68 challenge followed by a challenge with params gives both.
        """
        self.assertEqual(
            parseChallenges('Negotiate abc==, Basic realm="r"'),
            [
                Challenge("Negotiate", (), "abc=="),
                Challenge("Basic", (("realm", "r"),)),
            ],
        )

    def test_unquotedValuesAndSpaces(self) -> None:
        """
        Token values need no quotes, and spaces around C{=} and C{,} are
        allowed (RFC 9110's BWS and OWS).
        """
        self.assertEqual(
            parseChallenges("Bearer  realm = r ,  error=invalid_token"),
            [Challenge("Bearer", (("realm", "r"), ("error", "invalid_token")))],
        )

    def test_empty(self) -> None:
        """
        An empty header holds no challenges.
        """
        self.assertEqual(parseChallenges(""), [])

    def test_unterminatedQuote(self) -> None:
        """
        A quoted value that never ends is refused, not read to the end.
        """
        self.assertRaises(ChallengeParseError, parseChallenges, 'Basic realm="open')

    def test_notAScheme(self) -> None:
        """
        A header that does not start with a scheme is refused.
        """
        self.assertRaises(ChallengeParseError, parseChallenges, '="x"')


class ChallengeValueTests(SynchronousTestCase):
    """
    L{Challenge.get}, L{Challenge.replace} and L{bearer}.
    """

    def test_getIgnoresCase(self) -> None:
        """
        Parameter names match whatever their case.
        """
        challenge = Challenge("Bearer", (("Realm", "r"), ("SERVICE", "s")))
        self.assertEqual(challenge.get("realm"), "r")
        self.assertEqual(challenge.get("Service"), "s")
        self.assertIsNone(challenge.get("scope"))

    def test_replaceInPlace(self) -> None:
        """
        Replacing a parameter named in another case changes it where it is,
        keeping its written name and the order of the others.
        """
        challenge = Challenge("Bearer", (("Realm", "old"), ("service", "s")))
        self.assertEqual(
            challenge.replace("realm", "https://proxy.example/token"),
            Challenge(
                "Bearer", (("Realm", "https://proxy.example/token"), ("service", "s"))
            ),
        )

    def test_replaceAppends(self) -> None:
        """
        Replacing a parameter the challenge lacks appends it.
        """
        challenge = Challenge("Bearer", (("realm", "r"),))
        self.assertEqual(
            challenge.replace("scope", "repository:a:pull"),
            Challenge("Bearer", (("realm", "r"), ("scope", "repository:a:pull"))),
        )

    def test_replaceKeepsOriginal(self) -> None:
        """
        A challenge is a value: replacing gives a copy.
        """
        challenge = Challenge("Bearer", (("realm", "r"),))
        challenge.replace("realm", "other")
        self.assertEqual(challenge.get("realm"), "r")

    def test_bearerRealmFirstQuoted(self) -> None:
        """
        Our challenge writes the realm first, then the service, then the
        rest, every value quoted: some clients read only C{realm="..."}.
        """
        self.assertEqual(
            bearer(
                "https://proxy.example/token",
                "proxy.example",
                scope="repository:org/app:pull",
            ).serialize(),
            'Bearer realm="https://proxy.example/token",service="proxy.example",'
            'scope="repository:org/app:pull"',
        )

    def test_bearerRealmOnly(self) -> None:
        """
        Without a service, the challenge holds the realm alone.
        """
        self.assertEqual(
            bearer("http://10.0.0.2/token").serialize(),
            'Bearer realm="http://10.0.0.2/token"',
        )

    def test_serializeEscapes(self) -> None:
        """
        Quotes and backslashes in values are escaped when written.
        """
        self.assertEqual(
            Challenge("Basic", (("realm", 'a "b" \\c'),)).serialize(),
            'Basic realm="a \\"b\\" \\\\c"',
        )

    def test_serializeSeveral(self) -> None:
        """
        Several challenges are written as one comma-separated header value.
        """
        self.assertEqual(
            serializeChallenges(
                [
                    Challenge("Basic", (("realm", "r"),)),
                    Challenge("Negotiate", (), "a="),
                ]
            ),
            'Basic realm="r", Negotiate a=',
        )


class ChallengePropertyTests(SynchronousTestCase):
    """
    Round trips and robustness on arbitrary input.
    """

    @_examples
    @given(challenges)
    def test_roundTrip(self, challenge: Challenge) -> None:
        """
        Any challenge, written and read back, is itself.
        """
        self.assertEqual(parseChallenges(challenge.serialize()), [challenge])

    @_examples
    @given(challengeLists)
    def test_listRoundTrip(self, challengeList: list[Challenge]) -> None:
        """
        Any list of challenges, written as one header and read back, is
        itself.
        """
        self.assertEqual(
            parseChallenges(serializeChallenges(challengeList)), challengeList
        )

    @_examples
    @given(challenges, paramValues)
    def test_replaceThenParse(self, challenge: Challenge, realm: str) -> None:
        """
        A rewritten realm survives writing and reading, whatever the text.
        """
        if challenge.token68 is not None:
            challenge = Challenge(challenge.scheme)
        rewritten = challenge.replace("realm", realm)
        [parsed] = parseChallenges(rewritten.serialize())
        self.assertEqual(parsed.get("realm"), realm)

    def _parsesOrRefuses(self, text: str) -> None:
        try:
            result = parseChallenges(text)
        except ChallengeParseError:
            return
        self.assertIsInstance(result, list)
        for challenge in result:
            self.assertIsInstance(challenge, Challenge)

    @_examples
    @given(st.text())
    def test_arbitraryText(self, text: str) -> None:
        """
        Any text gives a list of challenges or L{ChallengeParseError}; never
        another exception.
        """
        self._parsesOrRefuses(text)

    @_examples
    @given(challengeLikeText)
    def test_arbitraryGrammarText(self, text: str) -> None:
        """
        Text made of the grammar's own punctuation gives a list of
        challenges or L{ChallengeParseError}; never another exception.
        """
        self._parsesOrRefuses(text)
