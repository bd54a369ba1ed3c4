# -*- test-case-name: tests.integration.test_forward_token -*-
"""
regproxy in front of a registry with token auth: skopeo completes the
token dance through regproxy, whose challenge points at its own C{/token},
which forwards to the registry's token server.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from regproxy.names.challenge import parseChallenges

from .clients import ClientFailed, httpClient
from .forwarding import ForwardingTests, writeImage
from .tokenserver import TokenServer


class TokenRegistryForwardingTests(ForwardingTests, TestCase):
    mode = "token"

    async def test_challengePointsAtRegproxy(self) -> None:
        """
        The registry's Bearer challenge reaches the client with the realm
        rewritten to regproxy's C{/token}; the service is the registry's.
        """
        http = httpClient(self)
        response = await http.get(self.proxy.url + "/v2/")
        await response.content()
        self.assertEqual(response.code, 401)
        (value,) = response.headers.getRawHeaders("www-authenticate")
        (challenge,) = parseChallenges(value)
        self.assertEqual(challenge.scheme.lower(), "bearer")
        self.assertEqual(challenge.get("realm"), self.proxy.url + "/token")
        self.assertEqual(challenge.get("service"), self.tokenServer().service)

    async def test_tokenDanceThroughRegproxy(self) -> None:
        """
        skopeo, which only knows regproxy, gets its tokens from the token
        server through regproxy, with its credentials and scopes intact.
        """
        image = writeImage(self.layout, "v1", [100], seed="dance")
        await self.push(image, "fleet/dance", "1.0")
        await self.inspectRaw("fleet/dance", "1.0")
        granted = [
            (request.account, scope)
            for request in self.tokenServer().requests
            if request.code == 200
            for scope in request.scopes
        ]
        self.assertIn(("alice", "repository:fleet/dance:pull,push"), granted)
        self.assertIn(("alice", "repository:fleet/dance:pull"), granted)

    async def test_wrongPassword(self) -> None:
        """
        A wrong password gets the token server's 401 through regproxy, and
        skopeo fails.
        """
        http = httpClient(self)
        wrong = "Basic " + base64.b64encode(b"alice:not-her-password").decode()
        response = await http.get(
            self.proxy.url + "/token",
            params={
                "service": self.tokenServer().service,
                "scope": "repository:fleet/x:pull",
            },
            headers={"Authorization": [wrong]},
        )
        await response.content()
        self.assertEqual(response.code, 401)

        with self.assertRaises(ClientFailed) as caught:
            await self.skopeo.inspect(
                self.proxy.reference("fleet/x", "1.0"),
                tlsVerify=False,
                creds=("alice", "not-her-password"),
            )
        self.assertIn("invalid username/password", str(caught.exception))

    def tokenServer(self) -> TokenServer:
        """
        The token server this mode's registry trusts.
        """
        assert self.registry.tokenServer is not None
        return self.registry.tokenServer
