# -*- test-case-name: tests.integration.test_forward_htpasswd_tls -*-
"""
regproxy in front of a registry with bcrypt htpasswd logins over HTTPS
(a self-signed certificate regproxy is told to trust with C{upstream_ca}):
Basic credentials pass through regproxy unchanged.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from .clients import ClientFailed, httpClient
from .forwarding import ForwardingTests, writeImage


class HtpasswdTLSRegistryForwardingTests(ForwardingTests, TestCase):
    mode = "htpasswd-tls"

    async def test_wrongPassword(self) -> None:
        """
        A wrong password is refused by the registry, and the client sees
        that refusal through regproxy: skopeo fails, an HTTP client gets 401
        with the registry's Basic challenge.
        """
        image = writeImage(self.layout, "v1", [100], seed="wrong")
        await self.push(image, "fleet/private", "1.0")

        with self.assertRaises(ClientFailed) as caught:
            await self.skopeo.inspect(
                self.proxy.reference("fleet/private", "1.0"),
                tlsVerify=False,
                creds=("alice", "not-her-password"),
            )
        self.assertIn("unauthorized", str(caught.exception).lower())

        http = httpClient(self)
        wrong = "Basic " + base64.b64encode(b"alice:not-her-password").decode()
        response = await http.get(
            self.proxy.url + "/v2/fleet/private/manifests/1.0",
            headers={"Authorization": [wrong]},
        )
        await response.content()
        self.assertEqual(response.code, 401)
        (challenge,) = response.headers.getRawHeaders("www-authenticate")
        self.assertTrue(challenge.lower().startswith("basic "), challenge)

    async def test_noCredentials(self) -> None:
        """
        Without credentials the registry's 401 reaches the client.
        """
        http = httpClient(self)
        response = await http.get(self.proxy.url + "/v2/")
        await response.content()
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("docker-distribution-api-version"),
            ["registry/2.0"],
        )
