# -*- test-case-name: tests.unit.test_resolve_balena -*-
"""
Resolve fleet names through the balena API.

One OData request per name: the fleet by slug, with the release the
selector picks expanded down to its images and their services.  The release
is chosen here rather than in the query so that a miss can say why (a
draft asked for by its final version, a failed build, an ambiguous commit
prefix, a C{v} prefix).

Selectors (the release segment of C{org/fleet/release/service}, or the tag):

  - none, C{latest}, C{current}, C{default}, C{pinned}: the fleet's target
    release (C{should_be_running__release});
  - C{1.2.3}: the successful final release with that C{semver} and the
    highest C{revision};
  - 7 to 40 hex digits: the release whose C{commit} is that, or starts with
    it when only one does;
  - anything else (drafts, C{1.2.3-1648554962021}): the release whose
    C{raw_version} is exactly that.

A digest reference without a release in the path picks the release holding
an image with that C{content_hash} (the target release when none does), and
goes upstream unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from regproxy.names.reference import (
    ALIASES,
    FleetName,
    ImageReference,
    InvalidReference,
)
from regproxy.resolve import odata
from regproxy.resolve.interfaces import (
    Credentials,
    IResolver,
    ManifestUnknown,
    NameUnknown,
    NotAuthorized,
    Resolution,
    ResolverUnavailable,
    ServiceRequired,
)
from regproxy.resolve.odata import Query

SUCCESS = "success"

_SEMVER = re.compile(r"\d+\.\d+\.\d+\Z")
_COMMIT = re.compile(r"[0-9a-f]{7,40}\Z")
_V_PREFIX = re.compile(r"v(\d+\.\d+\.\d+(?:[-+.][0-9a-z.+-]*)?)\Z")

_RELEASE_FIELDS = (
    "id",
    "commit",
    "raw_version",
    "semver",
    "revision",
    "is_final",
    "status",
)
_IMAGES = Query(
    select=("id",),
    expand=(
        (
            "image",
            Query(
                select=("id", "content_hash", "is_stored_at__image_location", "status"),
                expand=(("is_a_build_of__service", Query(select=("service_name",))),),
            ),
        ),
    ),
)


def _releaseQuery(filter: str | None = None) -> Query:
    return Query(
        select=_RELEASE_FIELDS,
        filter=filter,
        expand=(("contains__image", _IMAGES),),
    )


def _many(value: Any) -> list[dict[str, Any]]:
    """
    An expanded navigation's rows: pine answers lists, even for a single
    navigation; tolerate a bare object or null too.
    """
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return value
    raise ResolverUnavailable("the balena API answered in an unexpected shape")


def _one(value: Any) -> dict[str, Any] | None:
    rows = _many(value)
    return rows[0] if rows else None


def _timedOut(result: Any, timeout: float) -> Failure:
    return Failure(ResolverUnavailable("the balena API did not answer in time", 504))


def _label(release: dict[str, Any]) -> str:
    return str(release.get("raw_version") or release.get("commit") or release.get("id"))


@attrs.frozen
class _Image:
    service: str
    location: str
    contentHash: str | None
    status: str | None


def _images(release: dict[str, Any]) -> list[_Image]:
    images = []
    for link in _many(release.get("contains__image")):
        image = _one(link.get("image"))
        if image is None:
            continue
        service = _one(image.get("is_a_build_of__service")) or {}
        location = image.get("is_stored_at__image_location")
        if not isinstance(location, str) or "/" not in location:
            raise ResolverUnavailable("the balena API gave an image without a location")
        images.append(
            _Image(
                str(service.get("service_name", "")),
                location,
                image.get("content_hash"),
                image.get("status"),
            )
        )
    return images


@implementer(IResolver)
@attrs.frozen
class BalenaResolver:
    """
    Ask the balena API which image a fleet name means.

    @ivar apiURL: The API's base URL, e.g. C{https://api.balena-cloud.com}.
    @ivar client: A treq-like HTTP client (C{get(url, headers=...)}
        returning treq responses), e.g. C{treq.HTTPClient(agent)} or
        C{treq.testing.StubTreq}.
    @ivar clock: Times out API requests.
    @ivar timeout: Seconds to wait for a whole API answer.
    @ivar upstreamTag: The tag the upstream knows each image by.
    """

    apiURL: str
    client: Any
    clock: IReactorTime
    timeout: float = 30.0
    upstreamTag: str = "latest"

    _log = Logger()

    def resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[Resolution]:
        return Deferred.fromCoroutine(self._resolve(reference, credentials))

    def listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> Deferred[list[str] | None]:
        return Deferred.fromCoroutine(self._listReleases(reference, credentials))

    # Resolution

    async def _resolve(
        self, reference: ImageReference, credentials: Credentials
    ) -> Resolution:
        fleet = reference.fleetName()
        if fleet is None:
            raise NameUnknown(
                f"{reference.name} is not a fleet name (org/fleet[/release][/service])"
            )
        selector = fleet.release
        digest = str(reference.digest) if reference.digest is not None else None
        byAlias = selector is None or selector in ALIASES
        expand: list[tuple[str, Query]] = []
        if byAlias:
            expand.append(("should_be_running__release", _releaseQuery()))
            if digest is not None:
                expand.append(
                    (
                        "owns__release",
                        _releaseQuery(
                            odata.anyMatch(
                                "contains__image",
                                "ri",
                                odata.eq("ri/image/content_hash", digest),
                            )
                        ),
                    )
                )
        else:
            assert selector is not None
            expand.append(
                ("owns__release", _releaseQuery(self._selectorFilter(selector)))
            )
        app = await self._fleet(fleet, credentials, tuple(expand))

        if byAlias:
            release = None
            if digest is not None:
                release = next(
                    (
                        r
                        for r in _many(app.get("owns__release"))
                        if r.get("status") == SUCCESS
                    ),
                    None,
                )
            if release is None:
                release = _one(app.get("should_be_running__release"))
                if release is None:
                    raise ManifestUnknown(f"{fleet.slug} has no target release yet")
                if release.get("status") != SUCCESS:
                    raise ManifestUnknown(
                        f"the target release of {fleet.slug} ({_label(release)}) "
                        f"did not build successfully"
                    )
        else:
            assert selector is not None
            release = self._chooseRelease(
                fleet, selector, _many(app.get("owns__release"))
            )

        image = self._chooseImage(fleet, release, digest)
        registry, _, repository = image.location.partition("/")
        if digest is not None:
            upstreamReference: str | None = digest
        elif reference.tag is not None:
            upstreamReference = self.upstreamTag
        else:
            upstreamReference = None
        return Resolution(
            repository=repository,
            reference=upstreamReference,
            registry=registry,
            commit=release.get("commit"),
            version=release.get("raw_version"),
            contentHash=image.contentHash,
            service=image.service or None,
        )

    @staticmethod
    def _selectorFilter(selector: str) -> str:
        if _SEMVER.match(selector):
            # Drafts of that version too, to say how to ask for them.
            return odata.anyOf(
                odata.eq("semver", selector),
                odata.startswith("raw_version", selector + "-"),
            )
        if _COMMIT.match(selector):
            return odata.startswith("commit", selector)
        return odata.eq("raw_version", selector)

    @staticmethod
    def _chooseRelease(
        fleet: FleetName, selector: str, releases: list[dict[str, Any]]
    ) -> dict[str, Any]:
        where = f"{fleet.slug}"
        if _SEMVER.match(selector):
            finals = [
                r for r in releases if r.get("is_final") and r.get("semver") == selector
            ]
            good = [r for r in finals if r.get("status") == SUCCESS]
            if good:
                return max(good, key=lambda r: r.get("revision") or 0)
            if finals:
                raise ManifestUnknown(
                    f"release {selector} of {where} did not build successfully"
                )
            drafts = sorted(
                (
                    r
                    for r in releases
                    if not r.get("is_final") and r.get("status") == SUCCESS
                ),
                key=lambda r: str(r.get("raw_version")),
            )
            if drafts:
                raise ManifestUnknown(
                    f"{where} has no final release {selector}; drafts need their "
                    f"full version, e.g. {drafts[-1].get('raw_version')}"
                )
            raise ManifestUnknown(f"{where} has no release {selector}")
        if _COMMIT.match(selector):
            exact = [r for r in releases if r.get("commit") == selector]
            matches = exact or [
                r for r in releases if str(r.get("commit", "")).startswith(selector)
            ]
            if len(matches) > 1:
                commits = ", ".join(sorted(str(r.get("commit")) for r in matches))
                raise ManifestUnknown(
                    f"commit prefix {selector} is ambiguous in {where}: {commits}"
                )
            if not matches:
                raise ManifestUnknown(f"{where} has no release with commit {selector}")
            release = matches[0]
        else:
            if not releases:
                hint = ""
                vPrefix = _V_PREFIX.match(selector)
                if vPrefix:
                    hint = f"; did you mean {vPrefix.group(1)}?"
                raise ManifestUnknown(f"{where} has no release {selector}{hint}")
            release = releases[0]
        if release.get("status") != SUCCESS:
            raise ManifestUnknown(
                f"release {_label(release)} of {where} did not build successfully"
            )
        return release

    @staticmethod
    def _chooseImage(
        fleet: FleetName, release: dict[str, Any], digest: str | None
    ) -> _Image:
        images = _images(release)
        label = f"release {_label(release)} of {fleet.slug}"
        services = tuple(sorted(i.service for i in images))
        if fleet.service is not None:
            chosen = [i for i in images if i.service == fleet.service]
            if not chosen:
                raise ManifestUnknown(
                    f"{label} has no service {fleet.service}; "
                    f"its services: {', '.join(services) or 'none'}"
                )
        elif digest is not None and any(i.contentHash == digest for i in images):
            chosen = [i for i in images if i.contentHash == digest]
        elif len(images) > 1:
            raise ServiceRequired(
                f"{label} has several services ({', '.join(services)}): "
                f"name one, e.g. {fleet.withRelease(fleet.release or 'latest')}/"
                f"{services[0]}",
                services,
            )
        elif not images:
            raise ManifestUnknown(f"{label} has no images")
        else:
            chosen = images
        image = chosen[0]
        if image.status != SUCCESS:
            raise ManifestUnknown(
                f"the {image.service or 'only'} image of {label} did not build successfully"
            )
        return image

    # Tags

    async def _listReleases(
        self, reference: ImageReference, credentials: Credentials
    ) -> list[str]:
        try:
            fleet = FleetName.parse(reference.name)
        except InvalidReference:
            raise NameUnknown(
                f"{reference.name} is not a fleet name (org/fleet[/release][/service])"
            ) from None
        if fleet.release is not None:
            # One release's repository holds one image, known as latest.
            await self._resolve(
                ImageReference(reference.name, tag="latest"), credentials
            )
            return ["latest"]
        releases = Query(
            select=_RELEASE_FIELDS,
            filter=odata.eq("status", SUCCESS),
            expand=(
                (
                    "contains__image",
                    Query(
                        select=("id",), expand=(("image", Query(select=("status",))),)
                    ),
                ),
            ),
            orderby="id asc",
        )
        app = await self._fleet(fleet, credentials, (("owns__release", releases),))
        tags: dict[str, None] = {}
        for release in _many(app.get("owns__release")):
            images = [
                _one(link.get("image"))
                for link in _many(release.get("contains__image"))
            ]
            if (
                release.get("status") != SUCCESS
                or not images
                or any(
                    image is None or image.get("status") != SUCCESS for image in images
                )
            ):
                continue
            tag = (
                release.get("semver")
                if release.get("is_final")
                else release.get("raw_version")
            )
            if isinstance(tag, str) and tag:
                tags[tag] = None
        return list(tags)

    # The API

    async def _fleet(
        self,
        fleet: FleetName,
        credentials: Credentials,
        expand: tuple[tuple[str, Query], ...],
    ) -> dict[str, Any]:
        rows = await self._get(
            "v6/application",
            Query(
                select=("id", "slug", "is_public"),
                filter=odata.eq("slug", fleet.slug),
                expand=expand,
            ),
            credentials,
        )
        # Missing, or private and not the asker's to see: the same answer.
        if not rows:
            raise NameUnknown(f"no fleet {fleet.slug}")
        return rows[0]

    async def _get(
        self, resource: str, query: Query, credentials: Credentials
    ) -> list[dict[str, Any]]:
        headers = {b"Accept": [b"application/json"]}
        authorization = credentials.authorization()
        if authorization is not None:
            headers[b"Authorization"] = [authorization]
        url = query.url(self.apiURL, resource)
        request = self.client.get(url, headers=headers)
        request.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timedOut)
        try:
            response = await request
            body = response.content()
            body.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timedOut)
            content = await body
        except ResolverUnavailable:
            self._log.warn("balena API: no answer in {timeout}s", timeout=self.timeout)
            raise
        except Exception as e:
            self._log.warn("balena API unreachable: {error}", error=type(e).__name__)
            raise ResolverUnavailable(
                "the balena API could not be reached", 502
            ) from None
        code = response.code
        if code in (401, 403):
            raise NotAuthorized("the balena API refused the API key")
        if code >= 500:
            self._log.warn("balena API answered {code}", code=code)
            raise ResolverUnavailable(
                f"the balena API is unavailable ({code})",
                code if code in (503, 504) else 502,
            )
        if code != 200:
            self._log.error(
                "balena API answered {code} to {resource}: {body}",
                code=code,
                resource=resource,
                body=content[:200],
            )
            raise ResolverUnavailable(f"the balena API answered {code}", 502)
        try:
            rows = json.loads(content)["d"]
        except (ValueError, KeyError, TypeError):
            raise ResolverUnavailable(
                "the balena API answered in an unexpected shape"
            ) from None
        return _many(rows)
