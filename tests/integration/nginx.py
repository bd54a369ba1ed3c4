# -*- test-case-name: tests.integration.test_behind_nginx -*-
"""
Run Debian's nginx for a test, in front of a regproxy, the way balena's
public device URL fronts a device: nginx terminates TLS and proxies plain
HTTP with C{X-Forwarded-For/Proto/Host}.

    front = await startNginx(self, proxy.port)

nginx runs as a child process with its own prefix and configuration in a
temporary directory, in the foreground (C{daemon off}), on a free loopback
port; the test waits for its "start worker process" line (no sleeps).  It
connects to regproxy from C{127.0.0.2}, so a test can trust nginx's address
and not its own client's (C{127.0.0.1}).  Without nginx the test is
skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import cast

import attrs
from twisted.trial.unittest import SkipTest

from .registry import ListeningProcess, makeSelfSignedCertificate, startOnFreePort

NGINX = "/usr/sbin/nginx"
PROXY_ADDRESS = "127.0.0.2"


class NginxFailed(Exception):
    """
    nginx exited, or did not start, in time; the message has its output.
    """


class NginxProcess(ListeningProcess):
    ready = b"start worker process"

    def exitedEarly(self, reason) -> Exception:
        return NginxFailed(f"nginx exited early ({reason.value}):\n{self.output()}")

    def tooSlow(self, seconds: float) -> Exception:
        return NginxFailed(f"nginx did not start within {seconds}s:\n{self.output()}")


@attrs.frozen
class Nginx:
    """
    A running nginx.

    @ivar url: Its public URL, C{https://127.0.0.1:PORT}.
    @ivar certDir: Holds C{ca.crt} (its certificate), for skopeo's
        C{--cert-dir}.
    @ivar caFile: The same certificate, for an HTTP client.
    """

    url: str
    host: str
    port: int
    certDir: str
    caFile: str
    directory: str
    process: NginxProcess = attrs.field(repr=False)

    @property
    def accessLog(self) -> str:
        with open(os.path.join(self.directory, "access.log")) as f:
            return f.read()


def nginxConfig(
    directory: str, port: int, upstreamPort: int, cert: str, key: str
) -> str:
    """
    TLS on C{port}, everything proxied to regproxy on C{upstreamPort} with
    the forwarding headers set (replacing any the client sent, except
    C{X-Forwarded-For}, which nginx appends to), streaming both ways.
    """
    temp = "\n".join(
        f"    {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
error_log stderr notice;
pid {directory}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {directory}/access.log;
{temp}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        location / {{
            proxy_pass http://127.0.0.1:{upstreamPort};
            proxy_bind {PROXY_ADDRESS};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


async def startNginx(testCase, upstreamPort: int, reactor=None) -> Nginx:
    """
    Start nginx in front of C{127.0.0.1:upstreamPort} until C{testCase}
    ends, with a self-signed certificate for C{127.0.0.1}.

    @raise SkipTest: When nginx is not installed.
    """
    if not os.access(NGINX, os.X_OK):
        raise SkipTest("nginx is not installed (apt-get install nginx)")
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    directory = tempfile.mkdtemp(prefix="nginx-")
    testCase.addCleanup(shutil.rmtree, directory, True)
    # Workers run as nobody when nginx starts as root.
    os.chmod(directory, 0o755)
    # The certificate regproxy.tls.certificates.generateSelfSigned makes.
    cert, key = makeSelfSignedCertificate(directory)
    certDir = os.path.join(directory, "certs.d")
    os.mkdir(certDir)
    shutil.copy(cert, os.path.join(certDir, "ca.crt"))

    def start(port: int) -> NginxProcess:
        configFile = os.path.join(directory, "nginx.conf")
        with open(configFile, "w") as f:
            f.write(nginxConfig(directory, port, upstreamPort, cert, key))
        process = NginxProcess()
        argv = [NGINX, "-p", directory, "-e", "stderr", "-c", configFile]
        argv += ["-g", "daemon off;"]
        reactor.spawnProcess(process, NGINX, argv, env={"PATH": "/usr/sbin:/usr/bin"})
        return process

    port, process = await startOnFreePort(
        testCase, start, NginxFailed, "Address already in use", reactor
    )
    return Nginx(
        f"https://127.0.0.1:{port}",
        f"127.0.0.1:{port}",
        port,
        certDir,
        cert,
        directory,
        cast(NginxProcess, process),
    )
