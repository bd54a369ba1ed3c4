# -*- test-case-name: tests.unit.test_userauth -*-
"""
Tests for L{regproxy.auth.users}: regproxy's own bcrypt users and access
rules as the auth backend, alone and through the whole site (a real
regproxy L{Site} fed raw HTTP bytes, in front of an in-memory upstream that
only lets regproxy's service account in).
"""

from __future__ import annotations

import base64
import json
import os
import tomllib
from typing import cast
from urllib.parse import urlencode

import bcrypt
from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import regproxy.app
from regproxy.app import makeSite
from regproxy.auth.access import AccessRules, parseAccessRules
from regproxy.auth.credentials import BasicCredentials
from regproxy.auth.htpasswd import HtpasswdUsers, ThreadPoolRunner, runNow
from regproxy.auth.interfaces import Account, IAuthBackend, LoginFailed
from regproxy.auth.users import HtpasswdLogins
from regproxy.config import Config
from regproxy.names.scope import Scope
from regproxy.server.errors import RegistryError
from regproxy.testing.fakeregistry import (
    BASIC,
    UPSTREAM,
    FakeRegistry,
    digestOf,
    layerFor,
    manifestFor,
)
from tests.httpclient import RawClient, RawResponse

PASSWORDS = {"alice": "wonderland", "bob": "builder"}
SERVICE_ACCOUNT = ("svc", "svc-secret")
RULES = """
[[rule]]
users = ["alice"]
repositories = ["team/**", "public/*"]
actions = ["pull", "push"]

[[rule]]
users = ["bob"]
repositories = ["team/app"]
actions = ["pull"]

[[rule]]
users = ["<anonymous>"]
repositories = ["public/*"]
actions = ["pull"]
"""


def hashed(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))


def writeHtpasswd(path: str, users: dict[str, str]) -> None:
    with open(path, "wb") as f:
        for user, password in users.items():
            f.write(user.encode() + b":" + hashed(password) + b"\n")


def basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def claims(token: str) -> dict:
    segment = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def access(token: str) -> dict[str, list[str]]:
    return {entry["name"]: entry["actions"] for entry in claims(token)["access"]}


def errorCodes(response: RawResponse) -> list[str]:
    return [e["code"] for e in json.loads(response.body)["errors"]]


def scope(name: str, *actions: str) -> Scope:
    return Scope("repository", None, name, actions)


class HeldPool:
    """
    A thread pool that never runs what it is given: every check stays
    in flight, as when bcrypt is saturated.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs) -> None:
        self.calls.append((onResult, f, args))


class HtpasswdLoginsTests(SynchronousTestCase):
    """
    L{HtpasswdLogins} on its own: who logs in, what they are granted, and
    what regproxy sends upstream for them.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        writeHtpasswd(self.path, PASSWORDS)
        self.clock = Clock()
        self.logins = HtpasswdLogins(
            HtpasswdUsers(self.path, self.clock, runNow),
            parseAccessRules(tomllib.loads(RULES)),
            BasicCredentials(*SERVICE_ACCOUNT),
        )

    def test_interface(self) -> None:
        """
        It is an L{IAuthBackend}.
        """
        self.assertTrue(verifyObject(IAuthBackend, self.logins))

    def test_goodLogin(self) -> None:
        """
        A user with the right password is that user, with no upstream
        credentials of their own (regproxy's are used).
        """
        account = self.successResultOf(
            self.logins.login(BasicCredentials("alice", "wonderland"))
        )
        self.assertEqual(account, Account("alice", None))

    def test_anonymous(self) -> None:
        """
        No credentials is the anonymous account, without a bcrypt check.
        """
        self.assertEqual(self.successResultOf(self.logins.login(None)), Account())

    def test_wrongPassword(self) -> None:
        """
        A wrong password fails with L{LoginFailed}.
        """
        self.failureResultOf(
            self.logins.login(BasicCredentials("alice", "looking-glass")), LoginFailed
        )

    def test_unknownUser(self) -> None:
        """
        A user not in the file fails like a wrong password.
        """
        self.failureResultOf(
            self.logins.login(BasicCredentials("mallory", "wonderland")), LoginFailed
        )

    def test_otherUsersPassword(self) -> None:
        """
        Another user's password does not let a user in.
        """
        self.failureResultOf(
            self.logins.login(BasicCredentials("alice", "builder")), LoginFailed
        )

    def test_grantIsIntersection(self) -> None:
        """
        The grant is what was asked and what the rules allow: alice gets
        pull and push but not delete on her repository, nothing outside her
        rules; bob only pulls.
        """
        asked = (
            scope("team/app", "pull", "push", "delete"),
            scope("other/app", "pull"),
        )
        self.assertEqual(
            self.logins.grant(Account("alice"), asked),
            (scope("team/app", "pull", "push"),),
        )
        self.assertEqual(
            self.logins.grant(Account("bob"), asked), (scope("team/app", "pull"),)
        )

    def test_anonymousGrant(self) -> None:
        """
        Anonymous clients get what the anonymous rule allows, and only that.
        """
        asked = (scope("public/tool", "pull", "push"), scope("team/app", "pull"))
        self.assertEqual(
            self.logins.grant(Account(), asked), (scope("public/tool", "pull"),)
        )

    def test_defaultRules(self) -> None:
        """
        Without an access file every user pulls and pushes everything, and
        anonymous clients get nothing.
        """
        logins = HtpasswdLogins(self.logins.users, AccessRules.default())
        asked = (scope("any/thing", "pull", "push", "delete"),)
        self.assertEqual(
            logins.grant(Account("bob"), asked), (scope("any/thing", "pull", "push"),)
        )
        self.assertEqual(logins.grant(Account(), asked), ())

    def test_upstreamCredentials(self) -> None:
        """
        Every client, anonymous or not, reaches the upstream with the
        service credentials.
        """
        for account in [Account("alice"), Account()]:
            self.assertEqual(
                self.logins.upstreamCredentials(account),
                BasicCredentials(*SERVICE_ACCOUNT),
            )

    def test_anonymousUpstream(self) -> None:
        """
        Without service credentials, the upstream is reached anonymously.
        """
        logins = HtpasswdLogins(self.logins.users, self.logins.rules)
        self.assertIsNone(logins.upstreamCredentials(Account("alice")))

    def test_tooManyChecks(self) -> None:
        """
        When the bcrypt pool is full, a login fails at once with a 503
        registry error (try again), not a wrong-password answer.
        """
        runner = ThreadPoolRunner(
            MemoryReactorClock(), threads=1, maxWaiting=0, pool=HeldPool()
        )
        logins = HtpasswdLogins(
            HtpasswdUsers(self.path, self.clock, runner), self.logins.rules
        )
        waiting = logins.login(BasicCredentials("alice", "wonderland"))
        self.assertNoResult(waiting)
        failure = self.failureResultOf(
            logins.login(BasicCredentials("bob", "builder")), RegistryError
        )
        self.assertEqual(failure.value.status, 503)
        self.assertEqual(failure.value.code, "UNAVAILABLE")


class SiteTestCase(SynchronousTestCase):
    """
    A regproxy site with C{htpasswd} and C{access} in front of an upstream
    that takes Basic logins and knows only regproxy's service account.
    """

    runner: object = staticmethod(runNow)

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.registry = FakeRegistry(
            BASIC,
            users=dict([SERVICE_ACCOUNT]),
            grants={SERVICE_ACCOUNT[0]: {"*": ("pull", "push")}},
            clock=self.reactor,
        )
        for repository in ["team/app", "public/tool", "other/app"]:
            self.registry.addImage(repository)
        self.htpasswd = self.mktemp()
        writeHtpasswd(self.htpasswd, PASSWORDS)
        self.access = self.mktemp()
        with open(self.access, "w") as f:
            f.write(RULES)
        # bcrypt on the test's thread; the production pool is tested in
        # tests.unit.test_users.
        self.patch(regproxy.app, "ThreadPoolRunner", lambda reactor: self.runner)
        self.site = self.makeSite()

    def makeSite(self, **settings):
        self.agent = RequestTraversalAgent(self.registry)
        return makeSite(
            Config(
                **{
                    "upstream": UPSTREAM,
                    "listen": (),
                    "state_dir": self.mktemp(),
                    "htpasswd": self.htpasswd,
                    "access": self.access,
                    "upstream_user": SERVICE_ACCOUNT[0],
                    "upstream_password": SERVICE_ACCOUNT[1],
                    **settings,
                }
            ),
            self.reactor,
            agent=self.agent,
        )

    def send(self, method, path, headers=(), body=None) -> RawClient:
        client = RawClient(self.site)
        client.request(method, path, list(headers), body)
        return client

    def exchange(self, method, path, headers=(), body=None) -> RawResponse:
        client = self.send(method, path, headers, body)
        response = client.responseAfter(self.agent.flush, head=method == b"HEAD")
        self.assertIsNotNone(response, client.transport.value())
        return response

    def get(self, path: bytes, authorization: bytes | None = None) -> RawResponse:
        headers = [(b"Authorization", authorization)] if authorization else []
        return self.exchange(b"GET", path, headers)

    def tokenResponse(
        self, scopes=(), credentials: bytes | None = None, service="regproxy"
    ) -> RawResponse:
        query = [("service", service)] + [("scope", s) for s in scopes]
        return self.get(b"/token?" + urlencode(query).encode(), credentials)

    def token(self, scopes=(), credentials: bytes | None = None, **kw) -> str:
        response = self.tokenResponse(scopes, credentials, **kw)
        self.assertEqual(response.status, 200, response.body)
        return json.loads(response.body)["token"]

    def manifest(self, repository: str, authorization: bytes | None) -> RawResponse:
        return self.get(f"/v2/{repository}/manifests/latest".encode(), authorization)

    def assertUnauthorized(self, response: RawResponse) -> None:
        self.assertEqual(response.status, 401, response.body)
        self.assertEqual(errorCodes(response), ["UNAUTHORIZED"])
        self.assertTrue(
            response.header(b"content-type").startswith(b"application/json")
        )


class FrontDoorTests(SiteTestCase):
    """
    What a client sees of regproxy's own users and rules.
    """

    def test_pullWithToken(self) -> None:
        """
        alice's token for her repository gets the manifest, which regproxy
        fetched with its service account, never with alice's credentials.
        """
        token = self.token(["repository:team/app:pull"], basic("alice", "wonderland"))
        self.assertEqual(claims(token)["sub"], "alice")
        self.assertEqual(access(token), {"team/app": ["pull"]})
        response = self.manifest("team/app", b"Bearer " + token.encode())
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor("team/app"))
        sent = [r for r in self.registry.received if r.path.startswith(b"/v2/team/")]
        self.assertTrue(sent)
        for request in sent:
            self.assertEqual(request.header(b"authorization"), basic(*SERVICE_ACCOUNT))

    def test_basicOnRegistryPaths(self) -> None:
        """
        Basic credentials sent straight to a repository path are judged by
        the same users and rules.
        """
        response = self.manifest("team/app", basic("alice", "wonderland"))
        self.assertEqual(response.status, 200, response.body)
        response = self.manifest("other/app", basic("alice", "wonderland"))
        self.assertEqual(response.status, 401, response.body)

    def test_wrongPasswordAtToken(self) -> None:
        """
        A wrong password at C{/token} gets 401 in registry JSON.
        """
        response = self.tokenResponse(
            ["repository:team/app:pull"], basic("alice", "looking-glass")
        )
        self.assertUnauthorized(response)
        self.assertNotIn(b"looking-glass", response.body)

    def test_wrongPasswordLogin(self) -> None:
        """
        C{docker login} (a token request without a scope) fails with 401
        for a wrong password and succeeds for the right one.
        """
        self.assertUnauthorized(self.tokenResponse([], basic("bob", "wonderland")))
        self.assertEqual(self.tokenResponse([], basic("bob", "builder")).status, 200)

    def test_wrongPasswordPost(self) -> None:
        """
        The OAuth2 password grant with a wrong password gets 401 too.
        """
        response = self.exchange(
            b"POST",
            b"/token",
            [(b"Content-Type", b"application/x-www-form-urlencoded")],
            urlencode(
                {
                    "grant_type": "password",
                    "username": "alice",
                    "password": "looking-glass",
                    "service": "regproxy",
                    "scope": "repository:team/app:pull",
                    "client_id": "test",
                }
            ).encode(),
        )
        self.assertUnauthorized(response)

    def test_wrongPasswordOnRegistryPath(self) -> None:
        """
        A wrong Basic password on a repository path gets 401 in registry
        JSON with our Bearer challenge, and nothing is asked upstream.
        """
        response = self.manifest("team/app", basic("alice", "looking-glass"))
        self.assertUnauthorized(response)
        self.assertTrue(
            response.header(b"www-authenticate").startswith(b"Bearer realm="),
            response.headers,
        )
        self.assertEqual(
            [r for r in self.registry.received if r.path.startswith(b"/v2/team/")],
            [],
        )

    def test_unknownUser(self) -> None:
        """
        A user who is not in the file gets 401 like a wrong password.
        """
        self.assertUnauthorized(self.tokenResponse([], basic("mallory", "wonderland")))

    def test_grantIsIntersection(self) -> None:
        """
        The token carries only what was asked and is allowed; a scope
        outside the rules is left out (an empty grant, not an error).
        """
        token = self.token(
            [
                "repository:team/app:pull,push,delete",
                "repository:other/app:pull",
            ],
            basic("alice", "wonderland"),
        )
        self.assertEqual(access(token), {"team/app": ["pull", "push"]})
        token = self.token(["repository:team/app:pull,push"], basic("bob", "builder"))
        self.assertEqual(access(token), {"team/app": ["pull"]})

    def test_outsideRulesDenied(self) -> None:
        """
        A repository outside the user's rules is refused with 401
        C{insufficient_scope}, and the upstream is never asked for it.
        """
        token = self.token(["repository:other/app:pull"], basic("alice", "wonderland"))
        self.assertEqual(access(token), {})
        response = self.manifest("other/app", b"Bearer " + token.encode())
        self.assertUnauthorized(response)
        self.assertIn(
            b'error="insufficient_scope"', response.header(b"www-authenticate")
        )
        self.assertEqual(
            [r for r in self.registry.received if r.path.startswith(b"/v2/other/")],
            [],
        )

    def test_pullOnlyUserCannotPush(self) -> None:
        """
        bob, who may only pull, cannot start an upload.
        """
        token = self.token(["repository:team/app:pull,push"], basic("bob", "builder"))
        response = self.exchange(
            b"POST",
            b"/v2/team/app/blobs/uploads/",
            [(b"Authorization", b"Bearer " + token.encode())],
            b"",
        )
        self.assertUnauthorized(response)

    def test_anonymousRule(self) -> None:
        """
        An anonymous client pulls what the anonymous rule allows and
        nothing else.
        """
        token = self.token(["repository:public/tool:pull"])
        self.assertEqual(claims(token)["sub"], "")
        response = self.manifest("public/tool", b"Bearer " + token.encode())
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(response.body, manifestFor("public/tool"))

        token = self.token(["repository:team/app:pull"])
        self.assertEqual(access(token), {})
        self.assertUnauthorized(self.manifest("team/app", b"Bearer " + token.encode()))

    def test_challengeWithoutCredentials(self) -> None:
        """
        A client without credentials is sent to our token endpoint, with
        the scope it needs.
        """
        response = self.manifest("public/tool", None)
        self.assertUnauthorized(response)
        self.assertEqual(
            response.header(b"www-authenticate"),
            b'Bearer realm="http://proxy.example:8080/token",service="regproxy",'
            b'scope="repository:public/tool:pull"',
        )

    def test_tokenForAnotherService(self) -> None:
        """
        With our own users, a token may be asked for another service (a
        registry that uses regproxy as its token server): its audience is
        that service.
        """
        token = self.token(
            ["repository:team/app:pull"],
            basic("alice", "wonderland"),
            service="registry.test",
        )
        self.assertEqual(claims(token)["aud"], "registry.test")
        self.assertEqual(access(token), {"team/app": ["pull"]})

    def test_newUserPickedUp(self) -> None:
        """
        A user added to the htpasswd file while regproxy runs can log in a
        few seconds later, without a restart.
        """
        self.assertUnauthorized(self.tokenResponse([], basic("carol", "chess")))
        writeHtpasswd(self.htpasswd, {**PASSWORDS, "carol": "chess"})
        self.reactor.advance(10)
        token = self.token(["repository:team/app:pull"], basic("carol", "chess"))
        self.assertEqual(claims(token)["sub"], "carol")
        # carol is in no rule: she logs in, but gets nothing.
        self.assertEqual(access(token), {})

    def test_refreshAfterUserRemoved(self) -> None:
        """
        A refresh token (what C{docker login} keeps instead of the password)
        stops working once its user is taken out of the htpasswd file.
        """
        form = {
            "grant_type": "password",
            "username": "bob",
            "password": "builder",
            "service": "regproxy",
            "client_id": "test",
            "access_type": "offline",
        }
        headers = [(b"Content-Type", b"application/x-www-form-urlencoded")]
        response = self.exchange(b"POST", b"/token", headers, urlencode(form).encode())
        self.assertEqual(response.status, 200, response.body)
        refresh = {
            "grant_type": "refresh_token",
            "refresh_token": json.loads(response.body)["refresh_token"],
            "service": "regproxy",
            "client_id": "test",
            "scope": "repository:team/app:pull",
        }
        body = urlencode(refresh).encode()
        response = self.exchange(b"POST", b"/token", headers, body)
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(
            access(json.loads(response.body)["token"]), {"team/app": ["pull"]}
        )

        writeHtpasswd(self.htpasswd, {"alice": PASSWORDS["alice"]})
        self.reactor.advance(10)
        self.assertUnauthorized(self.exchange(b"POST", b"/token", headers, body))

    def test_defaultRules(self) -> None:
        """
        Without an access file, users pull and push everything and
        anonymous clients get nothing.
        """
        self.site = self.makeSite(access=None)
        token = self.token(["repository:other/app:pull,push"], basic("bob", "builder"))
        self.assertEqual(access(token), {"other/app": ["pull", "push"]})
        self.assertEqual(access(self.token(["repository:public/tool:pull"])), {})


class BusyTests(SiteTestCase):
    """
    When bcrypt checks pile up, clients are told to come back.
    """

    def setUp(self) -> None:
        self.pool = HeldPool()
        self.runner = ThreadPoolRunner(
            MemoryReactorClock(), threads=1, maxWaiting=0, pool=self.pool
        )
        super().setUp()

    def test_tooManyChecks(self) -> None:
        """
        With the pool full, the next login gets 503 in registry JSON, while
        the first is still being checked.
        """
        first = self.send(b"GET", b"/token", [(b"Authorization", basic("alice", "x"))])
        self.assertEqual(len(self.pool.calls), 1)
        response = self.get(b"/token", basic("bob", "builder"))
        self.assertEqual(response.status, 503, response.body)
        self.assertEqual(errorCodes(response), ["UNAVAILABLE"])
        self.assertIsNone(first.response())


class ReactorThread:
    """
    Enough of a reactor for L{ThreadPoolRunner}: work done "in a thread"
    reports back at once.
    """

    def callFromThread(self, f, *args, **kwargs) -> None:
        f(*args, **kwargs)

    def addSystemEventTrigger(self, *args) -> None:
        pass


class FloodTests(SiteTestCase):
    """
    A flood of wrong passwords against one account, from one address,
    while other clients log in: the production pool (2 threads, 32 more
    waiting), whose checks the test runs when it chooses.
    """

    def setUp(self) -> None:
        self.pool = HeldPool()
        self.runner = ThreadPoolRunner(
            ReactorThread(), pool=cast(ThreadPool, self.pool)
        )
        super().setUp()

    def login(self, user: str, password: str, peer: str) -> RawClient:
        client = RawClient(self.site, peer)
        client.request(b"GET", b"/token", [(b"Authorization", basic(user, password))])
        return client

    def answer(self, client: RawClient) -> RawResponse:
        response = client.response()
        assert response is not None, client.transport.value()
        return response

    def runChecks(self) -> None:
        while self.pool.calls:
            onResult, f, args = self.pool.calls.pop(0)
            onResult(True, f(*args))

    def test_floodOnOneAccount(self) -> None:
        """
        40 concurrent wrong passwords for alice from one address: some are
        checked (401), the rest get 429 with Retry-After at once; all the
        while bob, and alice from another address, log in.  Once the
        address has used its budget, it is answered 429 without a check.
        """
        flood = [self.login("alice", f"guess-{i}", "192.0.2.66") for i in range(40)]
        bob = self.login("bob", "builder", "198.51.100.7")
        alice = self.login("alice", "wonderland", "203.0.113.9")
        self.runChecks()
        self.assertEqual(self.answer(bob).status, 200, self.answer(bob).body)
        self.assertEqual(self.answer(alice).status, 200, self.answer(alice).body)
        statuses = [self.answer(client).status for client in flood]
        self.assertEqual(set(statuses), {401, 429}, statuses)
        broker = self.site.resource.children[b"token"].broker
        self.assertEqual(broker.loginsRefused, statuses.count(401))
        self.assertEqual(broker.loginsThrottled, statuses.count(429))
        throttled = [self.answer(c) for c in flood if self.answer(c).status == 429]
        self.assertEqual(errorCodes(throttled[0]), ["TOOMANYREQUESTS"])
        self.assertGreaterEqual(int(throttled[0].header(b"retry-after") or b""), 1)

        for _ in range(10):
            more = [self.login("alice", f"again-{i}", "192.0.2.66") for i in range(4)]
            self.runChecks()
        self.assertEqual([self.answer(c).status for c in more], [429] * 4)
        self.assertEqual(self.pool.calls, [])
        bob = self.login("bob", "builder", "198.51.100.8")
        self.runChecks()
        self.assertEqual(self.answer(bob).status, 200)

    def test_floodFromManyAddresses(self) -> None:
        """
        Wrong passwords for alice from 40 addresses at once hold only a
        share of the pool: bob still logs in.
        """
        flood = [self.login("alice", f"guess-{i}", f"192.0.2.{i}") for i in range(40)]
        bob = self.login("bob", "builder", "198.51.100.7")
        self.runChecks()
        self.assertEqual(self.answer(bob).status, 200, self.answer(bob).body)
        statuses = {self.answer(client).status for client in flood}
        self.assertEqual(statuses, {401, 429})

    def test_ownerRemembered(self) -> None:
        """
        An owner who logged in lately gets in without a check while fresh
        addresses flood her account, even from an address that has used up
        its budget: remembered credentials cost nothing to check.
        """
        alice = self.login("alice", "wonderland", "203.0.113.9")
        self.runChecks()
        self.assertEqual(self.answer(alice).status, 200)
        for _ in range(10):
            self.login("alice", "nope", "203.0.113.9")
            self.runChecks()
        flood = [self.login("alice", f"guess-{i}", f"192.0.2.{i}") for i in range(40)]
        alice = self.login("alice", "wonderland", "203.0.113.9")
        self.assertEqual(self.answer(alice).status, 200)
        self.runChecks()
        self.assertEqual({self.answer(c).status for c in flood}, {401, 429})

    def test_behindTrustedProxy(self) -> None:
        """
        Behind a trusted proxy, budgets are kept per client as the proxy
        names it, not for the proxy: one client's flood does not throttle
        another's login through the same proxy.
        """
        self.site = self.makeSite(trusted_proxy=("10.9.9.9/32",))

        def viaProxy(user: str, password: str, client: str) -> RawClient:
            raw = RawClient(self.site, "10.9.9.9")
            headers = [
                (b"Authorization", basic(user, password)),
                (b"X-Forwarded-For", client.encode()),
            ]
            raw.request(b"GET", b"/token", headers)
            self.runChecks()
            return raw

        for i in range(25):
            flooding = viaProxy(f"user{i}", "nope", "192.0.2.66")
        self.assertEqual(self.answer(flooding).status, 429)
        other = viaProxy("bob", "builder", "198.51.100.7")
        self.assertEqual(self.answer(other).status, 200)

    def test_budgetComesBack(self) -> None:
        """
        A throttled address may try again once its budget refills, on the
        reactor clock.
        """
        for _ in range(10):
            client = self.login("alice", "nope", "192.0.2.66")
            self.runChecks()
        self.assertEqual(self.answer(client).status, 429)
        self.reactor.advance(int(self.answer(client).header(b"retry-after") or b""))
        client = self.login("alice", "wonderland", "192.0.2.66")
        self.runChecks()
        self.assertEqual(self.answer(client).status, 200)


class MountTests(SiteTestCase):
    """
    A cross-repository mount copies a blob out of its C{from} repository:
    that is a pull of C{from}, judged by the same rules.
    """

    def mount(self, source: str, destination: str = "team/x") -> RawResponse:
        token = self.token(
            [f"repository:{destination}:pull,push", f"repository:{source}:pull"],
            basic("alice", "wonderland"),
        )
        digest = digestOf(layerFor(source))
        response = self.exchange(
            b"POST",
            f"/v2/{destination}/blobs/uploads/?mount={digest}&from={source}".encode(),
            [(b"Authorization", b"Bearer " + token.encode())],
            b"",
        )
        self.blob = self.get(
            f"/v2/{destination}/blobs/{digest}".encode(), b"Bearer " + token.encode()
        )
        return response

    def test_mountFromPullable(self) -> None:
        """
        alice may pull C{public/tool}: her mount from it into her own
        repository happens (201) and the blob is then hers to pull.
        """
        response = self.mount("public/tool")
        self.assertEqual(response.status, 201, response.body)
        self.assertEqual(self.blob.status, 200, self.blob.body)
        self.assertEqual(self.blob.body, layerFor("public/tool"))

    def test_mountFromForbidden(self) -> None:
        """
        alice may push to C{team/x} but not pull C{other/app}: the mount is
        dropped and an ordinary upload starts (202), as distribution does
        when a mount cannot happen; the blob never reaches C{team/x}, and
        the upstream never hears of C{other/app}.
        """
        response = self.mount("other/app")
        self.assertEqual(response.status, 202, response.body)
        self.assertIn(b"/v2/team/x/blobs/uploads/", response.header(b"location"))
        self.assertEqual(self.blob.status, 404, self.blob.body)
        self.assertEqual(errorCodes(self.blob), ["BLOB_UNKNOWN"])
        for received in self.registry.received:
            self.assertNotIn(b"other", received.uri)


class StartupTests(SynchronousTestCase):
    """
    Files regproxy refuses at start-up, with a message that says why.
    """

    def makeSite(self, **settings):
        return makeSite(
            Config(upstream=UPSTREAM, listen=(), state_dir=self.mktemp(), **settings),
            MemoryReactorClock(),
            agent=RequestTraversalAgent(FakeRegistry()),
        )

    def test_nonBcryptEntry(self) -> None:
        """
        An htpasswd entry of another scheme stops start-up with a
        L{ValueError} naming the line, the user and the scheme, but not the
        hash.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"alice:" + hashed("wonderland") + b"\n")
            f.write(b"bob:$apr1$abcdefgh$0123456789abcdefghijkl\n")
        with self.assertRaises(ValueError) as caught:
            self.makeSite(htpasswd=path)
        message = str(caught.exception)
        self.assertIn("line 2", message)
        self.assertIn("'bob'", message)
        self.assertIn("$apr1$", message)
        self.assertIn("bcrypt", message)
        self.assertNotIn("0123456789abcdefghijkl", message)

    def test_missingHtpasswd(self) -> None:
        """
        An htpasswd file that cannot be read stops start-up.
        """
        path = os.path.join(self.mktemp(), "missing")
        with self.assertRaises(ValueError) as caught:
            self.makeSite(htpasswd=path)
        self.assertIn(path, str(caught.exception))

    def test_badAccessFile(self) -> None:
        """
        An access file with an unknown action stops start-up, naming it.
        """
        htpasswd = self.mktemp()
        writeHtpasswd(htpasswd, PASSWORDS)
        access = self.mktemp()
        with open(access, "w") as f:
            f.write(
                '[[rule]]\nusers = ["alice"]\nrepositories = ["*"]\nactions = ["read"]\n'
            )
        with self.assertRaises(ValueError) as caught:
            self.makeSite(htpasswd=htpasswd, access=access)
        self.assertIn("'read'", str(caught.exception))

    def test_accessNeedsHtpasswd(self) -> None:
        """
        Rules without users make no sense and stop start-up.
        """
        access = self.mktemp()
        with open(access, "w") as f:
            f.write(RULES)
        with self.assertRaises(ValueError) as caught:
            self.makeSite(access=access)
        self.assertIn("--htpasswd", str(caught.exception))
