"""
regproxy as operators run it: a real C{twistd regproxy} process with
C{--metrics} and C{--log-format json} in front of a real registry, pulled
through with skopeo.  The Prometheus scrape (parsed as Prometheus parses
it) moves with the pull, and the log is one JSON object per line, with the
start-up lines and one line per request.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import cast

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from .clients import Skopeo, httpClient
from .forwarding import temporaryDirectory
from .oci import writeImage
from .registry import ListeningProcess, freePort, startOnFreePort, startRegistry

_REPO = FilePath(__file__).parent().parent().parent()
STARTUP_TIMEOUT = 60.0


class RegproxyFailed(Exception):
    pass


class RegproxyProcess(ListeningProcess):
    ready = b'"message": "listening on '
    metricsPort = 0

    def exitedEarly(self, reason) -> Exception:
        return RegproxyFailed(f"regproxy exited early:\n{self.output()}")

    def tooSlow(self, seconds: float) -> Exception:
        return RegproxyFailed(
            f"regproxy did not listen in {seconds}s:\n{self.output()}"
        )


async def startTwistd(testCase, *arguments: str) -> tuple[int, int, RegproxyProcess]:
    """
    Run C{twistd --nodaemon regproxy} with C{arguments} on free loopback
    ports for the registry and the metrics, until C{testCase} ends.

    @return: The two ports and the process.
    """
    directory = tempfile.mkdtemp(prefix="twistd-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("REGPROXY_")}
    environ["PYTHONPATH"] = _REPO.path

    def start(port: int) -> RegproxyProcess:
        process = RegproxyProcess()
        process.metricsPort = freePort()
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "regproxy",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--metrics",
            f"tcp:{process.metricsPort}:interface=127.0.0.1",
            "--state-dir",
            os.path.join(directory, "state"),
            *arguments,
        ]
        reactor.spawnProcess(process, sys.executable, argv, env=environ, path=directory)
        return process

    port, process = await startOnFreePort(
        testCase, start, RegproxyFailed, "cannot listen", reactor, STARTUP_TIMEOUT
    )
    started = cast(RegproxyProcess, process)
    return port, started.metricsPort, started


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class OperationsTests(TestCase):
    timeout = 300

    async def scrape(self, http, port: int) -> dict[tuple[str, tuple], float]:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
        self.assertEqual(response.code, 200)
        return samples((await response.content()).decode("utf-8"))

    async def test_scrapeAndJSONLog(self) -> None:
        """
        A pull moves the request, byte, upstream and token counters of the
        scrape; the JSON log has the start-up lines and a line for each
        blob with its bytes, client, name, repository and upstream status.
        """
        registry = await startRegistry(self, mode="open")
        port, metricsPort, process = await startTwistd(
            self, "--upstream", registry.url, "--log-format", "json"
        )
        skopeo = Skopeo(self)
        layout = temporaryDirectory(self, "oci-src-")
        image = writeImage(layout, "v1", [2_000_000, 1234], seed="operations")
        await skopeo.copy(
            image.reference,
            f"docker://{registry.host}/lib/app:1.0",
            destTLSVerify=False,
        )
        http = httpClient(self)
        before = await self.scrape(http, metricsPort)

        ready = await http.get(f"http://127.0.0.1:{port}/_ready")
        self.assertEqual(ready.code, 200)
        self.assertEqual(json.loads(await ready.content())["status"], "ready")

        directory = temporaryDirectory(self, "dir-")
        await skopeo.copy(
            f"docker://127.0.0.1:{port}/lib/app:1.0",
            f"dir:{directory}",
            srcTLSVerify=False,
        )
        after = await self.scrape(http, metricsPort)

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        blobs = moved("regproxy_requests_total", method="GET", route="blob", code="200")
        self.assertEqual(blobs, 1 + len(image.layers))
        self.assertGreaterEqual(
            moved(
                "regproxy_requests_total", method="GET", route="manifest", code="200"
            ),
            1,
        )
        layerBytes = sum(layer.size for layer in image.layers)
        self.assertGreaterEqual(moved("regproxy_response_bytes_total"), layerBytes)
        self.assertGreaterEqual(
            moved("regproxy_upstream_requests_total", code="200"), blobs
        )
        self.assertGreaterEqual(
            moved("regproxy_upstream_duration_seconds_count"), blobs
        )
        self.assertGreaterEqual(moved("regproxy_tokens_issued_total"), 1)
        self.assertEqual(after[("regproxy_requests_in_flight", ())], 0.0)
        self.assertEqual(
            after[("regproxy_upstream_errors_total", (("cause", "refused"),))], 0.0
        )

        await process.stop()
        records = [json.loads(line) for line in process.output().splitlines() if line]
        messages = [r.get("message", "") for r in records]
        for start in [
            f"listening on tcp:{port}:interface=127.0.0.1",
            f"metrics on tcp:{metricsPort}:interface=127.0.0.1",
            f"upstream: {registry.url}",
            "resolver: identity",
            "auth: broker",
            "users: ",
            "token issuer: regproxy",
            "cache: ",
        ]:
            self.assertEqual(
                len([m for m in messages if m.startswith(start)]), 1, start
            )
        requests = [r for r in records if r.get("event") == "request"]
        big = image.layers[0]
        (line,) = [r for r in requests if r["path"].endswith(big.digest)]
        self.assertEqual(line["bytes"], big.size)
        self.assertEqual(line["code"], 200)
        self.assertEqual(line["client"], "127.0.0.1")
        self.assertEqual(line["name"], "lib/app")
        self.assertEqual(line["repository"], "lib/app")
        self.assertEqual(line["upstream"], 200)
        self.assertFalse(line["aborted"])
        self.assertGreater(line["duration"], 0)
        self.assertTrue(line["time"].endswith("Z"))
        self.writeExcerpt(after, records)

    def writeExcerpt(self, scrape, records) -> None:
        """
        Keep a sample of what an operator sees, for the record.
        """
        path = os.environ.get("REGPROXY_OPERATIONS_SAMPLE")
        if not path:
            return
        with open(path, "w") as f:
            for (name, labels), value in sorted(scrape.items()):
                if name.startswith("regproxy_") and not name.endswith("_bucket"):
                    rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                    f.write(f"{name}{{{rendered}}} {value}\n")
            for record in records:
                f.write(json.dumps(record) + "\n")
