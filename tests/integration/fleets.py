# -*- test-case-name: tests.integration.test_fleets -*-
"""
A small balenaCloud on loopback, for the fleet-name tests: the fake balena
API (L{regproxy.testing.fakebalena}) and a real distribution registry in
token mode that trusts exactly the registry tokens the fake API grants, per
user, as balenaCloud's registry trusts its API.

The images of every fixture release are pushed once per test process into
the registry's C{v2/<hash>} repositories (as the fixture's C{builder},
through the fake API's own token endpoint), and the fixture's
C{content_hash} of each image is set to the digest that was pushed.  Each
test then starts its own registry process over that storage and its own
fake API (a fresh call count, a fresh C{stop()} state): a registry process
starts in well under a second, the pushes take much longer, and trial
wants every process and port gone when a test ends.

    fleets = await startFleets(self)
    proxy = startProxy(self, fleets.registry, balena_api=fleets.apiURL)
    fleets.digest(PUBLIC, "1.2.3+rev2")
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults

from regproxy.auth.issuerkeys import generateIssuerKeyAndCertificate
from regproxy.auth.jwt import TokenIssuer
from regproxy.testing.fakebalena import (
    ALICE_KEY,
    BOB_KEY,
    BUILDER_KEY,
    DEFAULT_REGISTRY,
    DRAFT_VERSION,
    FakeBalenaAPI,
    Fixture,
    defaultFixture,
)

from .clients import Skopeo
from .fakeapi import ServedAPI, serveFakeAPI
from .oci import Image, Index, writeImage, writeIndex
from .registry import Registry
from .tokenregistry import TokenAuth, startTokenModeRegistry

#: The fake API signs registry tokens as this issuer ...
ISSUER = "fake balena API"
#: ... for this audience, as balenaCloud's API does (the registry host,
#: whatever service was asked); the registry's C{auth.token.service}.
SERVICE = DEFAULT_REGISTRY

PUBLIC = "acme/public-app"
PRIVATE = "acme/private-app"
MULTI = "acme/multi"
#: A release of PUBLIC added to the default fixture: a two-platform index,
#: and not the fleet's target, so its children are found by digest only
#: through the manifest regproxy relayed.
INDEX_VERSION = "1.5.0"
TARGET_VERSION = "2.0.0"
DRAFT = DRAFT_VERSION

#: Logins as balena's CLI makes them: the user name and an API key.
ALICE = ("alice", ALICE_KEY)
BOB = ("bob", BOB_KEY)
BUILDER = ("builder", BUILDER_KEY)

#: Images pushed at once while the world is built (two cores).
PARALLEL_PUSHES = 3

ImageKey = tuple[str, str, str]  # fleet slug, release raw version, service


def fleetFixture() -> Fixture:
    """
    The fake API's default fixture (see L{defaultFixture}), plus
    L{INDEX_VERSION} of L{PUBLIC}.
    """
    fixture = defaultFixture(registryHost=SERVICE)
    fixture.addRelease(PUBLIC, INDEX_VERSION)
    return fixture


def imageKeys(fixture: Fixture) -> list[ImageKey]:
    """
    Every image of every release in C{fixture}, failed ones too: a pushed
    image of a failed release proves that regproxy refuses it because the
    API says so, not because the registry lacks it.
    """
    return sorted(
        (slug, version, service) for slug, version, service, _ in fixture.allImages()
    )


@attrs.frozen
class FleetWorld:
    """
    What is built once per test process: the fake API's signing key, the
    registry's storage holding every fixture image, and their digests.
    """

    directory: str
    storage: str
    bundleFile: str
    key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    certificate: x509.Certificate = attrs.field(repr=False)
    images: Mapping[ImageKey, Image | Index]

    def issuer(self, clock) -> TokenIssuer:
        return TokenIssuer(ISSUER, self.key, (self.certificate,), clock)

    def applyDigests(self, fixture: Fixture) -> Fixture:
        """
        Set each image's C{content_hash} to the digest pushed for it.
        """
        for (slug, version, service), image in self.images.items():
            fixture.setContentHash(slug, version, image.digest, service)
        return fixture

    def fixture(self) -> Fixture:
        return self.applyDigests(fleetFixture())


@attrs.frozen
class Fleets:
    """
    The running fake balenaCloud of one test.

    @ivar api: The fake API: its C{fixture}, C{calls}, C{stop()}.
    @ivar served: Where it listens.
    @ivar registry: The registry in token mode.
    """

    world: FleetWorld
    api: FakeBalenaAPI
    served: ServedAPI
    registry: Registry

    @property
    def apiURL(self) -> str:
        return self.served.url

    def image(self, slug: str, version: str, service: str = "main") -> Image | Index:
        return self.world.images[(slug, version, service)]

    def digest(self, slug: str, version: str, service: str = "main") -> str:
        """
        The manifest digest pushed for an image of a release (its raw
        version: C{1.2.3+rev2} for revision 2).
        """
        return self.image(slug, version, service).digest

    def repository(self, slug: str, version: str, service: str = "main") -> str:
        return self.api.fixture.repository(slug, version, service)

    def commit(self, slug: str, version: str) -> str:
        return self.api.fixture.release(slug, version)["commit"]


async def startTokenRegistry(
    testCase, world: FleetWorld, realm: str, reactor
) -> Registry:
    """
    Start a registry over C{world}'s storage until C{testCase} ends; it
    trusts tokens signed by C{world}'s issuer certificate for L{SERVICE}
    and sends clients to C{realm} for them.
    """
    return await startTokenModeRegistry(
        testCase,
        TokenAuth(realm, SERVICE, ISSUER, world.bundleFile),
        reactor,
        storage=world.storage,
    )


_world: FleetWorld | None = None


def _newWorld() -> tuple[str, str, str, ec.EllipticCurvePrivateKey, x509.Certificate]:
    directory = tempfile.mkdtemp(prefix="fleet-world-")
    atexit.register(shutil.rmtree, directory, True)
    storage = os.path.join(directory, "storage")
    os.mkdir(storage)
    key, certificate = generateIssuerKeyAndCertificate(ISSUER)
    bundleFile = os.path.join(directory, "issuer.crt")
    with open(bundleFile, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return directory, storage, bundleFile, key, certificate


def _writeImages(layout: str, keys: list[ImageKey]) -> dict[ImageKey, Image | Index]:
    """
    A distinct small image for each key (its seed is the key), and a
    two-platform index for L{INDEX_VERSION}.
    """
    images: dict[ImageKey, Image | Index] = {}
    for number, key in enumerate(keys):
        tag = f"image{number}"
        if key[:2] == (PUBLIC, INDEX_VERSION):
            images[key] = writeIndex(layout, tag, layerSizes=(3000, 5000), seed=key)
        else:
            images[key] = writeImage(layout, tag, [2000 + number, 700], seed=key)
    return images


async def _push(
    testCase,
    registry: Registry,
    fixture: Fixture,
    images: Mapping[ImageKey, Image | Index],
) -> None:
    """
    Push every image to its repository as the builder, with the tag
    balena's registry knows every image by (C{latest}).
    """
    skopeo = Skopeo(testCase)
    semaphore = DeferredSemaphore(PARALLEL_PUSHES)

    def push(key: ImageKey, image: Image | Index):
        destination = f"docker://{registry.host}/{fixture.repository(*key)}:latest"
        return semaphore.run(
            lambda: Deferred.fromCoroutine(
                skopeo.copy(
                    image.reference,
                    destination,
                    destTLSVerify=False,
                    destCreds=BUILDER,
                    all=isinstance(image, Index),
                )
            )
        )

    await gatherResults(
        [push(key, image) for key, image in images.items()], consumeErrors=True
    )


async def startFleets(testCase, reactor=None) -> Fleets:
    """
    Serve the fake API and start the registry for C{testCase}; the first
    call in a process also pushes every fixture image.
    """
    global _world
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if _world is not None:
        world = _world
        api = FakeBalenaAPI(world.fixture(), world.issuer(reactor))
        served = serveFakeAPI(testCase, api, reactor)
        registry = await startTokenRegistry(testCase, world, served.tokenRealm, reactor)
        return Fleets(world, api, served, registry)

    directory, storage, bundleFile, key, certificate = _newWorld()
    fixture = fleetFixture()
    keys = imageKeys(fixture)
    images = _writeImages(os.path.join(directory, "layout"), keys)
    world = FleetWorld(directory, storage, bundleFile, key, certificate, images)
    api = FakeBalenaAPI(fixture, world.issuer(reactor))
    served = serveFakeAPI(testCase, api, reactor)
    registry = await startTokenRegistry(testCase, world, served.tokenRealm, reactor)
    await _push(testCase, registry, fixture, images)
    world.applyDigests(fixture)
    del api.calls[:]
    _world = world
    return Fleets(world, api, served, registry)
