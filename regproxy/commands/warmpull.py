# -*- test-case-name: tests.unit.test_cachecommand -*-
"""
Pull images through a running regproxy so that its cache holds them: the
manifest (every platform of an index, or the ones asked for), the config
and every layer, read and thrown away.

A plain blocking client from the standard library: this runs once from a
shell, beside the daemon, and needs none of its machinery.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

from regproxy.names.challenge import ChallengeParseError, parseChallenges

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
CHUNK = 1024 * 1024


class WarmError(Exception):
    """
    A reference could not be pulled; the message says why.
    """


def splitReference(reference: str) -> tuple[str, str]:
    """
    C{name:tag}, C{name@digest} or C{name} (C{latest}) into (name, reference).
    """
    if "@" in reference:
        name, _, ref = reference.partition("@")
        return name, ref
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"


class Puller:
    """
    Speaks just enough of the registry API to pull, answering a Bearer
    challenge with an anonymous (or Basic-authenticated) token request.
    """

    def __init__(
        self,
        base: str,
        basic: tuple[str, str] | None = None,
        opener: Callable[..., Any] = urllib.request.urlopen,
    ) -> None:
        self.base = base.rstrip("/")
        self.basic = basic
        self.opener = opener
        self._tokens: dict[str, str] = {}
        self.bytesRead = 0

    def _open(self, name: str, path: str, accept: Iterable[str] = ()):
        for attempt in (1, 2):
            request = urllib.request.Request(self.base + path)
            if accept:
                request.add_header("Accept", ", ".join(accept))
            token = self._tokens.get(name)
            if token is not None:
                request.add_header("Authorization", "Bearer " + token)
            elif self.basic is not None:
                request.add_header("Authorization", self._basicHeader())
            try:
                return self.opener(request, timeout=600)
            except urllib.error.HTTPError as e:
                if e.code != 401 or attempt == 2:
                    raise WarmError(f"{path}: {e.code} {e.reason}") from None
                self._login(name, e.headers.get_all("WWW-Authenticate") or [])
        raise AssertionError("unreachable")

    def _basicHeader(self) -> str:
        assert self.basic is not None
        raw = f"{self.basic[0]}:{self.basic[1]}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def _login(self, name: str, challenges: list[str]) -> None:
        for value in challenges:
            try:
                parsed = parseChallenges(value)
            except ChallengeParseError:
                continue
            for challenge in parsed:
                if challenge.scheme.lower() != "bearer":
                    continue
                realm = challenge.get("realm")
                if not realm:
                    continue
                query = {"scope": f"repository:{name}:pull"}
                service = challenge.get("service")
                if service:
                    query["service"] = service
                url = realm + ("&" if "?" in realm else "?")
                request = urllib.request.Request(url + urllib.parse.urlencode(query))
                if self.basic is not None:
                    request.add_header("Authorization", self._basicHeader())
                try:
                    with self.opener(request, timeout=60) as response:
                        answer = json.load(response)
                except (urllib.error.HTTPError, ValueError) as e:
                    raise WarmError(f"token for {name}: {e}") from None
                self._tokens[name] = answer.get("token") or answer["access_token"]
                return
        raise WarmError(f"{name}: refused, and no Bearer challenge to answer")

    def manifest(self, name: str, reference: str) -> tuple[str, dict]:
        with self._open(name, f"/v2/{name}/manifests/{reference}", MANIFEST_TYPES) as r:
            body = r.read(4 * 1024 * 1024 + 1)
            mediaType = r.headers.get("Content-Type", "")
        self.bytesRead += len(body)
        try:
            document = json.loads(body)
        except ValueError:
            raise WarmError(f"{name}:{reference}: the manifest is not JSON") from None
        return document.get("mediaType") or mediaType, document

    def blob(self, name: str, digest: str) -> None:
        with self._open(name, f"/v2/{name}/blobs/{digest}") as response:
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                self.bytesRead += len(chunk)

    def pull(self, reference: str, platforms: tuple[str, ...] = ()) -> list[str]:
        """
        Pull C{reference}; the digests of the images pulled.
        """
        name, ref = splitReference(reference)
        mediaType, document = self.manifest(name, ref)
        if mediaType not in INDEX_TYPES and "manifests" not in document:
            self._image(name, document)
            return [ref]
        pulled = []
        for child in document.get("manifests", []):
            if platforms and not _wanted(_platform(child), platforms):
                continue
            _, image = self.manifest(name, child["digest"])
            self._image(name, image)
            pulled.append(child["digest"])
        if platforms and not pulled:
            raise WarmError(f"{reference}: no image for {', '.join(platforms)}")
        return pulled

    def _image(self, name: str, image: dict) -> None:
        for blob in [image.get("config", {}), *image.get("layers", [])]:
            if blob.get("digest"):
                self.blob(name, blob["digest"])


def _wanted(platform: str, wanted: tuple[str, ...]) -> bool:
    """
    C{linux/arm64} asks for C{linux/arm64/v8} too.
    """
    return any(platform == p or platform.startswith(p + "/") for p in wanted)


def _platform(descriptor: dict) -> str:
    platform = descriptor.get("platform") or {}
    text = f"{platform.get('os', '')}/{platform.get('architecture', '')}"
    if platform.get("variant"):
        text += "/" + platform["variant"]
    return text
