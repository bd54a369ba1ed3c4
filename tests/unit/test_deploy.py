"""
Tests for the deploy files in C{deploy/} and the C{Dockerfile}: each is
parsed, and what must agree with the daemon does: the variables are
settings regproxy knows and can parse, the ports are the ones it listens
on, the state directory is the one it writes, the probes are paths it
serves.
"""

from __future__ import annotations

import configparser
import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from regproxy.app import makeSite
from regproxy.commands.health import healthURL
from regproxy.config import Config, environmentName, loadConfig, settings

_REPO = FilePath(__file__).parent().parent().parent()
_DEPLOY = _REPO.child("deploy")
STATE_DIR = "/var/lib/regproxy"


def _knownVariables() -> set[str]:
    known = {"REGPROXY_CONFIG"}
    for field, spec in settings():
        known.add(environmentName(field))
        known.update(spec.aliases)
    return known


def _ports(listen: tuple[str, ...] | str | None) -> set[int]:
    if listen is None:
        return set()
    if isinstance(listen, str):
        listen = (listen,)
    return {int(endpoint.split(":")[1]) for endpoint in listen}


def _dockerfileEnvironment() -> dict[str, str]:
    environment = {}
    for line in _REPO.child("Dockerfile").getContent().decode().splitlines():
        if line.startswith("ENV "):
            name, _, value = line[4:].partition("=")
            environment[name.strip()] = value.strip()
    return environment


class DeployTestCase(SynchronousTestCase):
    def assertDaemonAccepts(self, environment: Mapping[str, str]) -> Config:
        """
        Every variable is one regproxy reads, and the daemon's configuration
        loads from them as they are.
        """
        self.assertEqual(set(environment) - _knownVariables(), set())
        # The file it names is the operator's, not in this repository.
        return loadConfig(
            {},
            {k: v for k, v in environment.items() if v and k != "REGPROXY_CONFIG"},
        )

    def assertServed(self, config: Config, path: str) -> None:
        """
        The daemon built from C{config} answers C{path} with a resource of
        its own (not the registry-format 404 for unknown paths).
        """
        site = makeSite(
            Config(state_dir=self.mktemp(), listen=config.listen, auth="passthrough"),
            MemoryReactorClock(),
        )
        self.assertIn(path.strip("/").encode(), site.resource.children)


class BalenaTests(DeployTestCase):
    def setUp(self) -> None:
        directory = _DEPLOY.child("balena")
        self.compose = yaml.safe_load(
            directory.child("docker-compose.yml").getContent()
        )
        self.balena = yaml.safe_load(directory.child("balena.yml").getContent())
        self.service = self.compose["services"]["regproxy"]

    def test_environment(self) -> None:
        """
        The compose file's variables are regproxy settings that parse; the
        state directory is the one the image uses and the volume holds.
        """
        environment = self.service["environment"]
        config = self.assertDaemonAccepts(environment)
        self.assertEqual(config.state_dir, STATE_DIR)
        self.assertEqual(_dockerfileEnvironment()["REGPROXY_STATE_DIR"], STATE_DIR)
        mounts = [volume.split(":") for volume in self.service["volumes"]]
        self.assertIn(STATE_DIR, [target for _, target in mounts])
        self.assertIn(mounts[0][0], self.compose["volumes"])

    def test_ports(self) -> None:
        """
        Each published port is one regproxy listens on (80 plain, 5000 TLS)
        or serves metrics on.
        """
        config = loadConfig({}, self.service["environment"])
        published = {int(port.split(":")[1]) for port in self.service["ports"]}
        self.assertEqual(published, _ports(config.listen) | _ports(config.metrics))
        self.assertEqual(_ports(config.listen), {80, 5000})

    def test_balenaVariables(self) -> None:
        """
        The one-click deploy asks for variables regproxy reads, including
        API_TOKEN.
        """
        variables: dict[str, Any] = {}
        for entry in self.balena["data"]["applicationEnvironmentVariables"]:
            variables.update(entry)
        self.assertIn("API_TOKEN", variables)
        self.assertDaemonAccepts({k: str(v) for k, v in variables.items()})
        self.assertEqual(self.balena["type"], "sw.application")


class KubernetesTests(DeployTestCase):
    def setUp(self) -> None:
        documents = list(
            yaml.safe_load_all(
                _DEPLOY.child("kubernetes").child("regproxy.yaml").getContent()
            )
        )
        self.byKind = {document["kind"]: document for document in documents}
        pod = self.byKind["Deployment"]["spec"]["template"]["spec"]
        self.pod = pod
        [self.container] = pod["containers"]
        self.environment = {
            variable["name"]: variable.get("value", "")
            for variable in self.container["env"]
        }

    def test_environment(self) -> None:
        """
        The container's variables are settings that parse, and its state
        directory is the mounted claim.
        """
        config = self.assertDaemonAccepts(self.environment)
        self.assertEqual(config.state_dir, STATE_DIR)
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        self.assertEqual(mounts["state"], STATE_DIR)
        claims = [
            volume["persistentVolumeClaim"]["claimName"]
            for volume in self.pod["volumes"]
            if "persistentVolumeClaim" in volume
        ]
        self.assertEqual(
            claims, [self.byKind["PersistentVolumeClaim"]["metadata"]["name"]]
        )

    def test_ports(self) -> None:
        """
        The container ports are the listeners and the metrics endpoint, and
        the Service maps onto them by name.
        """
        config = self.assertDaemonAccepts(self.environment)
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        self.assertEqual(
            set(ports.values()), _ports(config.listen) | _ports(config.metrics)
        )
        targets = {p["targetPort"] for p in self.byKind["Service"]["spec"]["ports"]}
        self.assertEqual(targets, set(ports))

    def test_probes(self) -> None:
        """
        Liveness asks C{/_health} and readiness C{/_ready}, on the plain
        listener, and the daemon serves both.
        """
        config = self.assertDaemonAccepts(self.environment)
        ports = {p["name"]: p["containerPort"] for p in self.container["ports"]}
        probes = {
            kind: self.container[kind]["httpGet"]
            for kind in ("livenessProbe", "readinessProbe")
        }
        self.assertEqual(probes["livenessProbe"]["path"], "/_health")
        self.assertEqual(probes["readinessProbe"]["path"], "/_ready")
        for probe in probes.values():
            self.assertEqual(
                healthURL(config.listen), f"http://127.0.0.1:{ports[probe['port']]}/_health"
            )
            self.assertServed(config, probe["path"])

    def test_hardened(self) -> None:
        """
        Non-root, a read-only root filesystem, no capabilities, no
        privilege escalation; the grace period covers the daemon's.
        """
        context = self.container["securityContext"]
        self.assertTrue(self.pod["securityContext"]["runAsNonRoot"])
        self.assertNotEqual(self.pod["securityContext"]["runAsUser"], 0)
        self.assertTrue(context["readOnlyRootFilesystem"])
        self.assertFalse(context["allowPrivilegeEscalation"])
        self.assertEqual(context["capabilities"]["drop"], ["ALL"])
        config = self.assertDaemonAccepts(self.environment)
        self.assertGreater(
            self.pod["terminationGracePeriodSeconds"], config.shutdown_grace
        )


class SystemdTests(DeployTestCase):
    def setUp(self) -> None:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(
            _DEPLOY.child("systemd").child("regproxy.service").getContent().decode()
        )
        self.service = parser["Service"]
        self.environment = {}
        for line in self.service["Environment"].splitlines():
            name, _, value = line.partition("=")
            self.environment[name] = value

    def test_runsTheDaemon(self) -> None:
        """
        It runs C{twistd regproxy} in the foreground without a pid file,
        and reload sends SIGHUP to it.
        """
        argv = shlex.split(self.service["ExecStart"])
        self.assertTrue(argv[0].endswith("/twistd"))
        self.assertEqual(argv[-1], "regproxy")
        self.assertIn("--nodaemon", argv)
        self.assertIn("--pidfile=", argv)
        self.assertRegex(self.service["ExecReload"], r"kill -HUP \$MAINPID$")

    def test_stateDirectory(self) -> None:
        """
        systemd makes C{/var/lib/regproxy} for a dedicated user, and that is
        where the daemon is told to keep its state.
        """
        config = self.assertDaemonAccepts(self.environment)
        self.assertEqual("/var/lib/" + self.service["StateDirectory"], config.state_dir)
        self.assertEqual(self.service["User"], "regproxy")
        self.assertNotEqual(self.service.get("DynamicUser", "yes"), "no")

    def test_lowPortsWithoutRoot(self) -> None:
        """
        The service may bind ports 80 and 5000 as its own user, and nothing
        more.
        """
        self.assertEqual(self.service["AmbientCapabilities"], "CAP_NET_BIND_SERVICE")
        self.assertEqual(self.service["CapabilityBoundingSet"], "CAP_NET_BIND_SERVICE")
        self.assertEqual(self.service["NoNewPrivileges"], "yes")
        self.assertEqual(self.service["ProtectSystem"], "strict")

    def test_stopsAfterTheGrace(self) -> None:
        """
        systemd waits longer than the daemon's shutdown grace before it kills.
        """
        config = self.assertDaemonAccepts(self.environment)
        seconds = int(re.match(r"\d+", self.service["TimeoutStopSec"]).group())  # type: ignore[union-attr]
        self.assertGreater(seconds, config.shutdown_grace)


class DockerfileTests(DeployTestCase):
    def test_healthCheckFollowsListener(self) -> None:
        """
        The image's health check is C{regproxy health}, which asks the first
        configured listener, not port 80 whatever C{--listen} says.
        """
        dockerfile = _REPO.child("Dockerfile").getContent().decode()
        self.assertIn('CMD ["regproxy", "health"', dockerfile)
        self.assertEqual(
            healthURL(loadConfig({}, {"REGPROXY_LISTEN": "tcp:8080"}).listen),
            "http://127.0.0.1:8080/_health",
        )
