"""
Real TLS handshakes on loopback with the C{regproxy-tls} listener: curl,
openssl and skopeo as child processes check what a client sees (names,
verification, refused old protocols), and certificate files are swapped
while a download is in flight.

Each test skips when the program it needs is missing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from regproxy.tls.caresource import CACertificateResource
from regproxy.tls.certificates import loadCertifiedKey
from regproxy.tls.context import makeContext
from regproxy.tls.describe import clientSetup
from regproxy.tls.hostnames import SubjectNames
from regproxy.tls.localca import SelfSignedPaths
from regproxy.tls.pem import fingerprint
from regproxy.tls.selfsigned import generateSelfSigned

LOOPBACK = [ipaddress.ip_address("127.0.0.1")]
CHUNK = b"x" * 65536


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SkipTest(f"{program} is not installed")
    return path


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.closeStdin()  # openssl s_client waits for stdin's end

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        self.done.callback((bytes(self.out), bytes(self.err), reason.value.exitCode))


def run(*argv: str, path: str | None = None) -> Deferred:
    """
    Run a program without blocking the reactor (which serves it meanwhile).

    @return: A L{Deferred} firing with C{(stdout, stderr, exitCode)}.
    """
    protocol = _Collect()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
    }
    reactor.spawnProcess(protocol, need(argv[0]), list(argv), env=env, path=path)
    return protocol.done


class SlowResource(Resource):
    """
    Sends one chunk, then holds the response open until L{release}: a
    download in flight.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.started: Deferred = Deferred()
        self._request = None

    def render_GET(self, request):
        request.setHeader(b"content-length", str(len(CHUNK) * 2).encode())
        request.write(CHUNK)
        self._request = request
        self.started.callback(None)
        return NOT_DONE_YET

    def release(self) -> None:
        assert self._request is not None
        self._request.write(CHUNK)
        self._request.finish()


class V2Resource(Resource):
    """
    Enough of a registry for a client to get past C{/v2/} and ask for a
    manifest (which is unknown).
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"docker-distribution-api-version", b"registry/2.0")
        request.setHeader(b"content-type", b"application/json")
        if request.path in (b"/v2/", b"/v2"):
            return b"{}"
        request.setResponseCode(404)
        return (
            b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",'
            b'"detail":"from the TLS test site"}]}'
        )

    render_HEAD = render_GET


def makeTestSite(stateDir: str) -> tuple[Site, SlowResource]:
    root = Resource()
    root.putChild(b"", Data(b"hello over TLS\n", "text/plain"))
    slow = SlowResource()
    root.putChild(b"slow", slow)
    root.putChild(b"_ca.crt", CACertificateResource.inStateDir(stateDir))
    root.putChild(b"v2", V2Resource())
    return Site(root), slow


def certificateSeen(output: bytes) -> x509.Certificate:
    """
    The first certificate in C{openssl s_client} output.
    """
    match = re.search(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.S
    )
    assert match is not None, output
    return x509.load_pem_x509_certificate(match.group(0))


class TLSListenerTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.stateDir = os.path.join(self.dir, "state")
        self.site, self.slow = makeTestSite(self.stateDir)

    @inlineCallbacks
    def listen(self, description: str):
        endpoint = serverFromString(reactor, description)
        port = yield endpoint.listen(self.site)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def selfSignedListener(self) -> Deferred:
        return self.listen(
            f"regproxy-tls:0:interface=127.0.0.1:stateDir={self.stateDir}:name=reg.example"
        )

    @property
    def caFile(self) -> str:
        return SelfSignedPaths.inStateDir(self.stateDir).ca

    @inlineCallbacks
    def test_curlVerifies(self):
        """
        curl, trusting only the generated C{ca.crt}, reaches us by address
        and by an extra name; C{/_ca.crt} serves that same file.
        """
        port = yield self.selfSignedListener()
        out, err, code = yield run(
            "curl",
            "--silent",
            "--show-error",
            "--cacert",
            self.caFile,
            f"https://127.0.0.1:{port}/",
        )
        self.assertEqual((out, code), (b"hello over TLS\n", 0), err)
        out, err, code = yield run(
            "curl",
            "--silent",
            "--show-error",
            "--cacert",
            self.caFile,
            "--resolve",
            f"reg.example:{port}:127.0.0.1",
            f"https://reg.example:{port}/_ca.crt",
        )
        self.assertEqual(code, 0, err)
        with open(self.caFile, "rb") as f:
            self.assertEqual(out, f.read())

    @inlineCallbacks
    def test_curlRefusesUntrusted(self):
        """
        Without our C{ca.crt}, curl refuses the certificate: verification
        is really on in the test above.
        """
        port = yield self.selfSignedListener()
        out, err, code = yield run(
            "curl", "--silent", "--show-error", f"https://127.0.0.1:{port}/"
        )
        self.assertEqual(code, 60, err)  # "Peer certificate cannot be authenticated"

    @inlineCallbacks
    def test_opensslSeesNames(self):
        """
        openssl sees the host name, C{<host>.local}, the loopback addresses
        and the C{name=} values, verifies the chain against C{ca.crt}, and
        negotiates TLS 1.2 or later with an ECDHE AEAD suite.
        """
        import socket

        port = yield self.selfSignedListener()
        out, err, code = yield run(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            "reg.example",
            "-verify_hostname",
            "reg.example",
            "-CAfile",
            self.caFile,
            "-verify_return_error",
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"Verify return code: 0 (ok)", out)
        self.assertRegex(out.decode(), r"New, TLSv1\.[23], Cipher is (TLS_|ECDHE-)")
        names = SubjectNames.fromCertificate(certificateSeen(out))
        short = socket.gethostname().split(".")[0].lower()
        for name in ("reg.example", short + ".local"):
            self.assertIn(name, names.dnsNames)
        self.assertIn(ipaddress.ip_address("127.0.0.1"), names.ipAddresses)
        self.assertIn(ipaddress.ip_address("::1"), names.ipAddresses)

    @inlineCallbacks
    def test_oldProtocolsRefused(self):
        """
        C{openssl s_client -tls1} and C{-tls1_1} are refused by the server
        (a protocol-version alert), while the same commands work against a
        listener that allows those versions: the local OpenSSL really tries.
        """
        port = yield self.selfSignedListener()
        permissive = makeContext(generateSelfSigned(SubjectNames([], LOOPBACK)))
        permissive.set_min_proto_version(SSL.TLS1_VERSION)
        permissive.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        from twisted.internet.ssl import ContextFactory

        class Permissive(ContextFactory):
            def getContext(self):
                return permissive

        control = reactor.listenSSL(0, self.site, Permissive(), interface="127.0.0.1")
        self.addCleanup(control.stopListening)
        for flag, version in (("-tls1", b"TLSv1"), ("-tls1_1", b"TLSv1.1")):
            command = ["openssl", "s_client", flag, "-cipher", "DEFAULT:@SECLEVEL=0"]
            out, err, code = yield run(
                *command, "-connect", f"127.0.0.1:{control.getHost().port}"
            )
            self.assertEqual(code, 0, err)
            self.assertRegex(
                out.decode(), rf"Protocol\s*: {re.escape(version.decode())}\n"
            )
            out, err, code = yield run(*command, "-connect", f"127.0.0.1:{port}")
            self.assertNotEqual(code, 0)
            self.assertIn(b"alert protocol version", err)

    @inlineCallbacks
    def test_reloadDuringDownload(self):
        """
        Certificate files replaced while a download is in flight: the next
        connection gets the new certificate, with no restart, and the
        download started before completes.
        """
        cert, key = (
            os.path.join(self.dir, "server.crt"),
            os.path.join(self.dir, "server.key"),
        )

        def install(names: list[str]) -> str:
            made = generateSelfSigned(SubjectNames(names, LOOPBACK))
            for path, data in ((key, made.keyPEM()), (cert, made.certificatePEM())):
                with open(path + ".new", "wb") as f:
                    f.write(data)
                os.replace(path + ".new", path)
            ca = os.path.join(self.dir, names[0] + ".crt")
            shutil.copy(cert, ca)
            return ca

        firstCA = install(["first.example"])
        port = yield self.listen(
            f"regproxy-tls:0:interface=127.0.0.1:cert={cert}:key={key}"
        )
        output = os.path.join(self.dir, "download")
        download = run(
            "curl",
            "--silent",
            "--show-error",
            "--cacert",
            firstCA,
            "--output",
            output,
            f"https://127.0.0.1:{port}/slow",
        )
        yield self.slow.started
        secondCA = install(["second.example"])
        out, err, code = yield run(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            secondCA,
            "-verify_return_error",
        )
        self.assertEqual(code, 0, err)
        with open(secondCA, "rb") as f:
            self.assertEqual(
                fingerprint(certificateSeen(out)),
                fingerprint(x509.load_pem_x509_certificate(f.read())),
            )
        self.assertFalse(download.called)
        self.slow.release()
        out, err, code = yield download
        self.assertEqual(code, 0, err)
        with open(output, "rb") as f:
            self.assertEqual(f.read(), CHUNK * 2)

    @inlineCallbacks
    def test_plainAndTLS(self):
        """
        One process serves the same site over plain HTTP and TLS at once.
        """
        tlsPort = yield self.selfSignedListener()
        plainPort = yield self.listen("tcp:0:interface=127.0.0.1")
        for url, extra in (
            (f"http://127.0.0.1:{plainPort}/", []),
            (f"https://127.0.0.1:{tlsPort}/", ["--cacert", self.caFile]),
        ):
            out, err, code = yield run("curl", "--silent", "--show-error", *extra, url)
            self.assertEqual((out, code), (b"hello over TLS\n", 0), err)

    @inlineCallbacks
    def test_skopeoTrustsCertDir(self):
        """
        skopeo (Go's TLS stack, as docker and podman use) accepts the
        generated certificate from a C{--cert-dir} holding our C{ca.crt}:
        it gets past TLS to the registry's answer.  Without it, it refuses.
        """
        port = yield self.selfSignedListener()
        certDir = os.path.join(self.dir, "certs.d")
        os.makedirs(certDir)
        shutil.copy(self.caFile, os.path.join(certDir, "ca.crt"))
        image = f"docker://127.0.0.1:{port}/some/image:latest"
        out, err, code = yield run(
            "skopeo",
            "inspect",
            "--no-creds",
            "--tls-verify=true",
            "--cert-dir",
            certDir,
            image,
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"manifest unknown", err)
        self.assertNotIn(b"x509", err)
        out, err, code = yield run(
            "skopeo", "inspect", "--no-creds", "--tls-verify=true", image
        )
        self.assertNotEqual(code, 0)
        self.assertIn(b"x509", err)

    @inlineCallbacks
    def test_clientSetupWorks(self):
        """
        The client steps we log and print really work: run with C{sudo}
        dropped and C{/etc} moved under a temporary root, they fetch our
        certificate, print the fingerprint we announced, and leave docker,
        podman and containerd trust files that a real client (skopeo, given
        the podman directory) verifies our listener with.
        """
        import tomllib

        port = yield self.selfSignedListener()
        paths = SelfSignedPaths.inStateDir(self.stateDir)
        announced = loadCertifiedKey(paths.ca, paths.caKey).fingerprint
        root = os.path.join(self.dir, "client-root")
        work = os.path.join(self.dir, "client-work")
        os.makedirs(work)
        script = clientSetup("127.0.0.1", port, announced)
        script = script.replace("sudo ", "").replace("/etc/", root + "/etc/")
        out, err, code = yield run("sh", "-e", "-c", script, path=work)
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), rf"(?i)sha256 Fingerprint={announced}\n")
        where = f"127.0.0.1:{port}"
        with open(paths.ca, "rb") as f:
            ours = f.read()
        for client in ("docker", "containers", "containerd"):
            with open(
                os.path.join(root, "etc", client, "certs.d", where, "ca.crt"), "rb"
            ) as f:
                self.assertEqual(f.read(), ours)
        with open(
            os.path.join(root, "etc/containerd/certs.d", where, "hosts.toml"), "rb"
        ) as f:
            hosts = tomllib.load(f)
        self.assertEqual(hosts["server"], f"https://{where}")
        self.assertEqual(
            hosts["host"][f"https://{where}"]["ca"],
            f"{root}/etc/containerd/certs.d/{where}/ca.crt",
        )
        out, err, code = yield run(
            "skopeo",
            "inspect",
            "--no-creds",
            "--tls-verify=true",
            "--cert-dir",
            os.path.join(root, "etc/containers/certs.d", where),
            f"docker://{where}/some/image:latest",
        )
        self.assertIn(b"manifest unknown", err)
        self.assertNotIn(b"x509", err)


class WalkthroughTests(TestCase):
    """
    The issue's self-signed walkthrough with regproxy's own site in front of
    a real registry: one process serves plain HTTP and C{regproxy-tls}; a
    client pulls over TLS with verification on, trusting only the
    generated C{ca.crt}, and over plain HTTP as an insecure registry.
    """

    timeout = 300

    async def test_pullThroughTLSAndPlain(self) -> None:
        import tempfile

        from regproxy.app import makeSite
        from regproxy.config import Config
        from regproxy.proxy.agent import makeUpstreamAgent
        from regproxy.tls.endpoint import TLSDefaults, serverEndpoint

        from .clients import Skopeo
        from .loopback import TrackingFactory
        from .oci import writeImage
        from .registry import startRegistry

        registry = await startRegistry(self, mode="open")
        skopeo = Skopeo(self)
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        layout = tempfile.mkdtemp(dir=work)
        image = writeImage(layout, "v1", [4096, 300_000], seed="tls-walkthrough")
        await skopeo.copy(
            image.reference,
            f"docker://{registry.host}/acme/app:v1",
            destTLSVerify=False,
        )

        stateDir = os.path.join(work, "state")
        config = Config(upstream=registry.url, listen=(), state_dir=stateDir)
        agent = makeUpstreamAgent(reactor, config)
        factory = TrackingFactory(makeSite(config, reactor, agent=agent))
        tlsPort: Any = await serverEndpoint(
            reactor,
            "regproxy-tls:0:interface=127.0.0.1",
            TLSDefaults(config.state_dir, config.tls_name),
        ).listen(factory)
        plainPort: Any = await serverFromString(
            reactor, "tcp:0:interface=127.0.0.1"
        ).listen(factory)

        async def stop() -> None:
            await factory.whenIdle()
            await agent._pool.closeCachedConnections()
            await tlsPort.stopListening()
            await plainPort.stopListening()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))

        certDir = os.path.join(work, "certs.d", f"127.0.0.1:{tlsPort.getHost().port}")
        os.makedirs(certDir)
        shutil.copy(SelfSignedPaths.inStateDir(stateDir).ca, certDir + "/ca.crt")
        with open(os.path.join(layout, "blobs", *image.digest.split(":")), "rb") as f:
            manifest = f.read()

        tlsReference = f"docker://127.0.0.1:{tlsPort.getHost().port}/acme/app:v1"
        viaTLS = os.path.join(work, "via-tls")
        await skopeo.copy(
            tlsReference, f"dir:{viaTLS}", srcTLSVerify=True, srcCertDir=certDir
        )
        viaPlain = os.path.join(work, "via-plain")
        await skopeo.copy(
            f"docker://127.0.0.1:{plainPort.getHost().port}/acme/app:v1",
            f"dir:{viaPlain}",
            srcTLSVerify=False,
        )
        for copied in (viaTLS, viaPlain):
            with open(os.path.join(copied, "manifest.json"), "rb") as f:
                self.assertEqual(f.read(), manifest)
            for blob in image.layers:
                self.assertTrue(os.path.exists(os.path.join(copied, blob.hex)))

        refused = await skopeo.run(
            "inspect", "--tls-verify=true", tlsReference, check=False
        )
        self.assertNotEqual(refused.code, 0)
        self.assertIn(b"x509", refused.stderr)


class DefaultListenerTests(TestCase):
    """
    The default listeners (on port 0 here, so tests never need port 80)
    answer on IPv4 and IPv6 loopback, which the certificate names.
    """

    timeout = 60

    async def test_bothFamilies(self) -> None:
        from regproxy.config import loadConfig
        from regproxy.tls.endpoint import TLSDefaults, serverEndpoint

        work = os.path.abspath(self.mktemp())
        stateDir = os.path.join(work, "state")
        site, _ = makeTestSite(stateDir)
        defaults = loadConfig({}, {}).listen
        self.assertEqual(len(defaults), 2)
        ports = {}
        for description in defaults:
            self.assertNotIn("interface=", description)
            kind, _, _ = description.partition(":")
            anyPort = re.sub(r"\A([a-z-]+):\d+", r"\1:0", description)
            endpoint = serverEndpoint(reactor, anyPort, TLSDefaults(stateDir))
            port: Any = await endpoint.listen(site)
            self.addCleanup(port.stopListening)
            ports[kind] = port.getHost().port
        caFile = SelfSignedPaths.inStateDir(stateDir).ca
        for host in ("127.0.0.1", "[::1]"):
            for url, extra in (
                (f"http://{host}:{ports['regproxy-tcp']}/", []),
                (f"https://{host}:{ports['regproxy-tls']}/", ["--cacert", caFile]),
            ):
                out, err, code = await run(
                    "curl", "--silent", "--show-error", "--globoff", *extra, url
                )
                self.assertEqual((out, code), (b"hello over TLS\n", 0), (url, err))


_BINDV6ONLY_CHILD = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from regproxy.tls.dualstack import DualStackServerEndpoint

def fetch(number):
    return [
        subprocess.run(
            ["curl", "--silent", "--globoff", f"http://{host}:{number}/"],
            capture_output=True,
        ).stdout.decode()
        for host in ("127.0.0.1", "[::1]")
    ]

async def main():
    root = Resource()
    root.putChild(b"", Data(b"ok", "text/plain"))
    port = await DualStackServerEndpoint(reactor, 0).listen(Site(root))
    answers = await threads.deferToThread(fetch, port.getHost().port)
    print(len(port.ports), *answers)
    reactor.stop()

reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()))
reactor.run()
"""


class BindV6OnlyTests(TestCase):
    """
    Where an IPv6 socket takes IPv6 only (C{net.ipv6.bindv6only=1}, as on
    BSD), the plain default listener opens a second socket for IPv4: run in
    a network namespace of its own, so the machine's setting is untouched.
    """

    timeout = 60

    async def test_bothFamilies(self) -> None:
        import sys

        need("unshare")
        need("ip")
        need("curl")
        repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        script = (
            "ip link set lo up && echo 1 > /proc/sys/net/ipv6/bindv6only && "
            'exec "$0" -c "$1" "$2"'
        )
        out, err, code = await run(
            "unshare", "-n", "sh", "-c", script, sys.executable, _BINDV6ONLY_CHILD, repo
        )
        if code != 0 and b"Operation not permitted" in err:
            raise SkipTest("no permission for a network namespace here")
        self.assertEqual((out, code), (b"2 ok ok\n", 0), err)


class TrustKeptTests(TestCase):
    """
    A client that trusts only the CA in an existing state directory keeps
    verifying, with skopeo and curl, after the names change and after the
    server certificate is renewed, with the listener running throughout.
    """

    timeout = 120

    def setUp(self) -> None:
        from regproxy.tls.endpoint import TLSDefaults, TLSListenerSpec, makeEndpoint

        self.dir = os.path.abspath(self.mktemp())
        self.stateDir = os.path.join(self.dir, "state")
        # The state directory an earlier regproxy made: one self-signed
        # certificate, CA and server certificate at once.
        self.legacy = generateSelfSigned(SubjectNames(["localhost"], LOOPBACK))
        os.makedirs(os.path.join(self.stateDir, "tls"))
        paths = SelfSignedPaths.inStateDir(self.stateDir)
        for path, data in (
            (paths.caKey, self.legacy.keyPEM()),
            (paths.ca, self.legacy.certificatePEM()),
        ):
            with open(path, "wb") as f:
                f.write(data)
        self.certDir = os.path.join(self.dir, "certs.d")
        os.makedirs(self.certDir)
        with open(os.path.join(self.certDir, "ca.crt"), "wb") as f:
            f.write(self.legacy.certificatePEM())
        self.names = SubjectNames(["localhost"], LOOPBACK)
        self.endpoint = makeEndpoint(
            reactor,
            TLSListenerSpec(0),
            TLSDefaults(self.stateDir),
            names=lambda extra: self.names,
        )
        self.site, _ = makeTestSite(self.stateDir)

    async def listen(self) -> int:
        port: Any = await self.endpoint.listen(self.site)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def skopeo(self, host: str, port: int) -> bytes:
        """
        What skopeo, trusting only the CA it was given, says of us.
        """
        out, err, code = await run(
            "skopeo",
            "inspect",
            "--no-creds",
            "--tls-verify=true",
            "--cert-dir",
            self.certDir,
            f"docker://{host}:{port}/some/image:latest",
        )
        self.assertNotEqual(code, 0)
        return err

    def assertTrusted(self, err: bytes) -> None:
        self.assertIn(b"manifest unknown", err)
        self.assertNotIn(b"x509", err)

    async def test_namesChange(self) -> None:
        """
        The old certificate is kept as the CA; a new address (127.0.0.2,
        loopback too) is refused by name until the names change, then
        accepted with the same CA, by skopeo and, on ::1, by curl; and
        C{/_ca.crt} still serves that CA.
        """
        port = await self.listen()
        self.assertTrusted(await self.skopeo("127.0.0.1", port))
        refused = await self.skopeo("127.0.0.2", port)
        self.assertIn(b"x509", refused)
        self.assertNotIn(b"unknown authority", refused)
        self.names = SubjectNames(
            ["localhost"],
            LOOPBACK + [ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("::1")],
        )
        self.assertTrue(self.endpoint.reload())
        self.assertTrusted(await self.skopeo("127.0.0.2", port))
        self.assertTrusted(await self.skopeo("127.0.0.1", port))
        out, err, code = await run(
            "curl",
            "--silent",
            "--show-error",
            "--globoff",
            "--cacert",
            os.path.join(self.certDir, "ca.crt"),
            f"https://[::1]:{port}/_ca.crt",
        )
        self.assertEqual((out, code), (self.legacy.certificatePEM(), 0), err)

    async def test_renewal(self) -> None:
        """
        A server certificate near its end is replaced while running by one
        the same CA signs; curl, trusting only the CA, verifies both.
        """
        import datetime

        from regproxy.tls.certificates import CertifiedKey
        from regproxy.tls.selfsigned import SERVER_LIFETIME, issueServerCertificate

        paths = SelfSignedPaths.inStateDir(self.stateDir)
        ca = CertifiedKey(self.legacy.certificate, self.legacy.key)
        ageing = issueServerCertificate(
            ca,
            self.names,
            datetime.datetime.now(datetime.timezone.utc)
            - SERVER_LIFETIME
            + datetime.timedelta(days=5),
        )
        for path, data in (
            (paths.serverKey, ageing.keyPEM()),
            (paths.server, ageing.certificatePEM()),
        ):
            with open(path, "wb") as f:
                f.write(data)
        port = await self.listen()

        async def seen() -> x509.Certificate:
            out, err, code = await run(
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-CAfile",
                paths.ca,
                "-verify_return_error",
            )
            self.assertEqual(code, 0, err)
            return certificateSeen(out)

        before = await seen()
        self.assertEqual(fingerprint(before), ageing.fingerprint)
        self.assertTrue(self.endpoint.reload())
        after = await seen()
        self.assertNotEqual(fingerprint(after), fingerprint(before))
        self.assertGreater(after.not_valid_after_utc, before.not_valid_after_utc)
        self.assertTrusted(await self.skopeo("127.0.0.1", port))
