"""
regproxy behind a real nginx that terminates TLS, the way balena's public
device URL fronts a device: with C{--trusted-proxy} naming nginx, the token
realm and upload C{Location}s name nginx's public https URL and the log
names the real client; a client that sends its own C{X-Forwarded-*}
straight to regproxy changes nothing, and none of those headers reach the
upstream registry.
"""

from __future__ import annotations

import json
from typing import cast

from twisted.internet import reactor
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import TestCase

from regproxy.names.challenge import parseChallenges
from regproxy.server.site import RegproxySite

from .clients import Skopeo, httpClient
from .forwarding import readBlob, temporaryDirectory
from .nginx import PROXY_ADDRESS, startNginx
from .oci import sha256File, writeImage
from .proxy import startProxy
from .registry import startRegistry


class BehindNginxTests(TestCase):
    timeout = 300

    async def setUp(self) -> None:
        self.registry = await startRegistry(self, mode="open")
        self.proxy = startProxy(
            self, self.registry, trusted_proxy=(f"{PROXY_ADDRESS}/32",)
        )
        self.events: list[dict] = []
        site = cast(RegproxySite, self.proxy.site)
        site._log = Logger(observer=cast(ILogObserver, self.events.append))
        self.nginx = await startNginx(self, self.proxy.port)
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-src-")

    def requestLines(self) -> list[dict]:
        return [e for e in self.events if e.get("regproxy_request")]

    async def challenge(self, http, base: str, headers=None):
        response = await http.get(base + "/v2/", headers=headers or {})
        await response.content()
        self.assertEqual(response.code, 401)
        (challenge,) = parseChallenges(
            response.headers.getRawHeaders("www-authenticate")[0]
        )
        return challenge

    async def token(self, http, challenge, scope: str, headers=None) -> str:
        response = await http.get(
            challenge.get("realm"),
            params={"service": challenge.get("service"), "scope": scope},
            headers=headers or {},
        )
        body = await response.content()
        self.assertEqual(response.code, 200, body)
        return json.loads(body)["token"]

    async def test_pushAndPullThroughNginx(self) -> None:
        """
        skopeo pushes and pulls through nginx's https URL (trusting its
        certificate with C{--cert-dir}); the token realm and the upload
        C{Location} name that URL, and the log names skopeo's address, not
        nginx's.
        """
        image = writeImage(self.layout, "v1", [1000, 300_000], seed="nginx")
        reference = f"docker://{self.nginx.host}/lib/app:1.0"
        await self.skopeo.copy(
            image.reference, reference, destCertDir=self.nginx.certDir
        )
        directory = temporaryDirectory(self, "dir-")
        await self.skopeo.copy(
            reference, f"dir:{directory}", srcCertDir=self.nginx.certDir
        )
        with open(f"{directory}/manifest.json", "rb") as f:
            self.assertEqual(f.read(), readBlob(self.layout, image.digest))
        for layer in image.layers:
            self.assertEqual(sha256File(f"{directory}/{layer.hex}"), layer.digest)

        http = httpClient(self, caFile=self.nginx.caFile)
        challenge = await self.challenge(http, self.nginx.url)
        self.assertEqual(challenge.get("realm"), self.nginx.url + "/token")
        token = await self.token(http, challenge, "repository:lib/up:push,pull")
        upload = await http.post(
            self.nginx.url + "/v2/lib/up/blobs/uploads/",
            headers={"Authorization": ["Bearer " + token]},
        )
        await upload.content()
        self.assertEqual(upload.code, 202)
        (location,) = upload.headers.getRawHeaders("location")
        self.assertTrue(
            location.startswith(self.nginx.url + "/v2/lib/up/blobs/uploads/"),
            location,
        )

        lines = self.requestLines()
        self.assertGreater(len(lines), 5)
        self.assertEqual({line["client"] for line in lines}, {"127.0.0.1"})
        # nginx did connect from its own address: it is what was trusted.
        self.assertIn("lib/app", self.nginx.accessLog)

    async def test_directClientSpoofing(self) -> None:
        """
        A client that is not a trusted proxy sends X-Forwarded-* itself: the
        realm stays regproxy's own URL, the log names its real address, and
        the upstream registry never sees those headers (it logs the address
        it was told in X-Forwarded-For as the remote address).
        """
        http = httpClient(self)
        spoof = {
            "X-Forwarded-For": ["203.0.113.9"],
            "X-Forwarded-Proto": ["https"],
            "X-Forwarded-Host": ["evil.example"],
            "Forwarded": ["for=203.0.113.9;proto=https;host=evil.example"],
        }
        challenge = await self.challenge(http, self.proxy.url, spoof)
        self.assertEqual(challenge.get("realm"), self.proxy.url + "/token")
        token = await self.token(
            http, challenge, "repository:lib/spoof:pull", headers=spoof
        )
        response = await http.get(
            self.proxy.url + "/v2/lib/spoof/manifests/marker-tag",
            headers={**spoof, "Authorization": ["Bearer " + token]},
        )
        await response.content()
        self.assertEqual(response.code, 404)
        self.assertEqual(response.headers.getRawHeaders("location"), None)

        seen = self.registry.process.whenOutputHas(b"marker-tag")
        seen.addTimeout(30, reactor)
        await seen
        registryLines = [
            line for line in self.registry.output.splitlines() if "marker-tag" in line
        ]
        self.assertTrue(registryLines)
        self.assertNotIn("203.0.113.9", "\n".join(registryLines))
        self.assertIn("http.request.remoteaddr=", registryLines[0])

        lines = self.requestLines()
        self.assertEqual({line["client"] for line in lines}, {"127.0.0.1"})
        self.assertEqual(
            [line["path"] for line in lines][-1], "/v2/lib/spoof/manifests/marker-tag"
        )
