# -*- test-case-name: tests.integration.test_forward_broker -*-
"""
The same pushes and pulls as the other forwarding tests, with regproxy as
a broker (its default): clients get regproxy's own tokens, and regproxy
acts for them towards the open, Basic and token-auth upstreams with their
own credentials.
"""

from __future__ import annotations

import base64
import json
import re

from twisted.trial.unittest import TestCase

from .clients import Skopeo, httpClient
from .forwarding import (
    ForwardingTests,
    authSettings,
    readBlob,
    temporaryDirectory,
)
from .oci import writeImage
from .proxy import startProxy
from .registry import Registry, startRegistry


class BrokerOpenRegistryTests(ForwardingTests, TestCase):
    mode = "open"
    auth = "broker"


class BrokerHtpasswdTLSRegistryTests(ForwardingTests, TestCase):
    mode = "htpasswd-tls"
    auth = "broker"


class BrokerTokenRegistryTests(ForwardingTests, TestCase):
    mode = "token"
    auth = "broker"


def blobRequests(registry: Registry) -> list[tuple[str, str, str]]:
    """
    The blob upload requests the registry logged so far: (method, URI,
    status) for each POST, PATCH and PUT under C{/blobs/uploads/}.
    """
    found = []
    for line in registry.output.splitlines():
        if 'msg="response completed"' not in line:
            continue
        method = re.search(r"http\.request\.method=(\S+)", line)
        uri = re.search(r'http\.request\.uri="([^"]+)"', line)
        status = re.search(r"http\.response\.status=(\d+)", line)
        if method and uri and status and "/blobs/uploads/" in uri.group(1):
            found.append((method.group(1), uri.group(1), status.group(1)))
    return found


class BrokerTokenSpecTests(TestCase):
    """
    The distribution spec through the broker, against a token-auth
    registry: mounts and deletes work as they do directly.
    """

    timeout = 300

    async def setUp(self) -> None:
        self.registry = await startRegistry(
            self, mode="token", users={"alice": "wonderland"}
        )
        self.proxy = startProxy(self, self.registry, **authSettings("broker"))
        self.skopeo = Skopeo(self)
        self.layout = temporaryDirectory(self, "oci-src-")
        self.image = writeImage(self.layout, "v1", [3000, 70000], seed="mount")

    async def copyBetween(self, host: str, prefix: str) -> list[tuple[str, str]]:
        """
        Push to C{<host>/<prefix>/src}, copy to C{<host>/<prefix>/dst}; what
        the registry saw of the copy's uploads: (request, status), with
        C{"mount"} for a mount from the source, sorted.
        """
        creds = ("alice", "wonderland")
        source = f"docker://{host}/{prefix}/src:1.0"
        await self.skopeo.copy(
            self.image.reference, source, destTLSVerify=False, destCreds=creds
        )
        before = len(blobRequests(self.registry))
        await self.skopeo.copy(
            source,
            f"docker://{host}/{prefix}/dst:1.0",
            srcTLSVerify=False,
            destTLSVerify=False,
            srcCreds=creds,
            destCreds=creds,
        )
        seen = []
        for method, uri, status in blobRequests(self.registry)[before:]:
            self.assertIn(f"/v2/{prefix}/dst/blobs/uploads/", uri)
            if "mount=" in uri:
                self.assertIn(f"from={prefix}%2Fsrc", uri)
                method = "mount"
            seen.append((method, status))
        return sorted(seen)

    async def test_mountAsDirectly(self) -> None:
        """
        Through regproxy, the registry sees the same uploads as from skopeo
        straight to it: each layer mounted (201), not uploaded again; only
        the config is uploaded, as directly.
        """
        direct = await self.copyBetween(self.registry.host, "direct")
        self.assertEqual(direct.count(("mount", "201")), 2, direct)
        proxied = await self.copyBetween(self.proxy.host, "proxied")
        self.assertEqual(proxied, direct)

    async def test_deletedManifestGone(self) -> None:
        """
        A manifest deleted through regproxy (202 from the registry) is gone
        for GET and HEAD by digest, though regproxy had kept it in memory.
        """
        creds = ("alice", "wonderland")
        await self.skopeo.copy(
            self.image.reference,
            self.proxy.reference("team/gone", "1.0"),
            destTLSVerify=False,
            destCreds=creds,
        )
        http = httpClient(self)
        response = await http.get(
            self.proxy.url + "/token",
            params=[("service", "regproxy"), ("scope", "repository:team/gone:*")],
            headers={
                "Authorization": [
                    "Basic " + base64.b64encode(b"alice:wonderland").decode()
                ]
            },
        )
        self.assertEqual(response.code, 200)
        headers = {
            "Authorization": [
                "Bearer " + json.loads(await response.content())["token"]
            ],
            "Accept": [self.image.manifest.mediaType],
        }
        url = self.proxy.url + f"/v2/team/gone/manifests/{self.image.digest}"
        for _ in range(2):
            found = await http.get(url, headers=headers)
            self.assertEqual(await found.content(), self.manifestBytes())
        deleted = await http.delete(url, headers=headers)
        await deleted.content()
        self.assertEqual(deleted.code, 202)
        for method in ("GET", "HEAD"):
            gone = await http.request(method, url, headers=headers)
            await gone.content()
            self.assertEqual(gone.code, 404, method)

    def manifestBytes(self) -> bytes:
        return readBlob(self.layout, self.image.digest)
