"""
Start and stop the processes of regproxy's benchmarks: a distribution
registry, regproxy and nginx on loopback, and watch their memory and CPU.

Everything a benchmark starts belongs to one L{Harness}, which stops every
process and removes its temporary directory on exit, on error and on Ctrl-C
(or SIGTERM/SIGHUP).  Every wait has a time limit, and readiness is taken
from a process's own log line ("listening on", "starting on", "start worker
processes"), never from a sleep.  L{_registry} puts content into the
registry; L{_clients} measures (curl, wrk, hey).

Only the standard library and attrs are used, so the benchmarks run in the
same environment as regproxy itself.  Names are camelCase, as in the rest of
the project.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    """
    A benchmark step failed or ran out of time; the message says which.
    """


def freePort(host: str = LOOPBACK) -> int:
    """
    A TCP port that was free a moment ago, for programs (the registry,
    nginx) that cannot listen on port 0 and tell us which port they got.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# Processes.


def _dieWithParent() -> None:
    """
    Run in the child before exec: its own session (so the whole group can be
    stopped) and SIGTERM when the benchmark dies, even by SIGKILL (so an
    nginx master still stops its workers).
    """
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class ManagedProcess:
    """
    A child process whose output (stdout and stderr together) is kept: the
    last lines in memory, all of it in a log file, and waited on line by line.

    @ivar name: What the reports call it ("registry", "regproxy").
    @ivar logPath: Where its whole output goes.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logPath: str,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.logPath = logPath
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._lineCount = 0
        self._changed = threading.Condition()
        self._log = open(logPath, "w", encoding="utf-8", errors="replace")
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                preexec_fn=_dieWithParent,
            )
        except OSError as e:
            self._log.close()
            raise BenchError(f"{name}: cannot run {self.argv[0]}: {e}") from None
        self._reader = threading.Thread(
            target=self._readOutput, name=f"{name}-output", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _readOutput(self) -> None:
        assert self._popen.stdout is not None
        for raw in self._popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.write(line + "\n")
            with self._changed:
                self._lines.append(line)
                self._lineCount += 1
                self._changed.notify_all()
        self._popen.wait()
        self._log.flush()
        with self._changed:
            self._changed.notify_all()

    def running(self) -> bool:
        return self._popen.poll() is None

    def tail(self, count: int = 20) -> str:
        with self._changed:
            return "\n".join(list(self._lines)[-count:])

    def waitForLine(self, pattern: str, timeout: float) -> re.Match[str]:
        """
        Wait until a line of output matches C{pattern}, looking at every line
        since the process started.

        @raise BenchError: If the process exits first or C{timeout} seconds
            pass; the message carries the process's last lines.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                lines = list(self._lines)
                fresh = lines[max(0, len(lines) - (self._lineCount - seen)) :]
                seen = self._lineCount
                for line in fresh:
                    match = regex.search(line)
                    if match:
                        return match
                if not self._reader.is_alive():
                    raise BenchError(
                        f"{self.name} exited (status {self._popen.poll()}) "
                        f"before printing /{pattern}/; its last lines:\n" + self.tail()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.name} did not print /{pattern}/ within "
                        f"{timeout:g} s; its last lines:\n" + self.tail()
                    )
                self._changed.wait(left)

    def stop(self, timeout: float = 10.0) -> None:
        """
        SIGTERM the process's group, then SIGKILL it if it is still there
        after C{timeout} seconds.
        """
        if self._popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self._popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self._popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:
            # The leader is gone; take any workers it left in its group.
            try:
                os.killpg(self._popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reader.join(5.0)
        self._log.close()

    # Memory, from /proc.

    def _status(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise BenchError(f"{self.name}: no {field} in /proc/{self.pid}/status")

    def rss(self) -> int:
        """
        Resident set size now, in bytes.
        """
        return self._status("VmRSS")

    def peakRss(self) -> int:
        """
        The highest resident set size since start or since L{resetPeakRss}.
        """
        return self._status("VmHWM")

    def resetPeakRss(self) -> bool:
        """
        Reset the kernel's peak-RSS mark (Linux 4.0+), so L{peakRss} covers
        only what happens next; C{False} if the kernel would not.
        """
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def cpuSeconds(self, group: bool = False) -> float:
        """
        User plus system CPU time the process has used so far; with
        C{group}, that of every live process in its process group too (an
        nginx master and its workers).
        """
        return sum(self.cpuTimes(group))

    def cpuTimes(self, group: bool = False) -> tuple[float, float]:
        """
        Like L{cpuSeconds}, but user and system (kernel) time apart.
        """
        ticks = os.sysconf("SC_CLK_TCK")
        pids = [str(self.pid)]
        if group:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        user = system = 0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if pid == str(self.pid) or int(fields[2]) == self.pid:
                user += int(fields[11])
                system += int(fields[12])
        return user / ticks, system / ticks


class MemoryWatch:
    """
    The peak RSS of a process while a block runs: VmRSS sampled every few
    milliseconds in a thread, and the kernel's VmHWM reset on entry and read
    on exit (which catches peaks shorter than the sampling interval).

        with MemoryWatch(process) as watch:
            fetch(...)
        watch.peak
    """

    def __init__(self, process: ManagedProcess, interval: float = 0.005) -> None:
        self.process = process
        self.interval = interval
        self.sampledPeak = 0
        self.kernelPeak: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak(self) -> int:
        return max(self.sampledPeak, self.kernelPeak or 0)

    def _sample(self) -> None:
        while True:
            try:
                self.sampledPeak = max(self.sampledPeak, self.process.rss())
                self.samples += 1
            except (OSError, BenchError):
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> MemoryWatch:
        self._hwmReset = self.process.resetPeakRss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self._hwmReset:
            try:
                self.kernelPeak = self.process.peakRss()
            except (OSError, BenchError):
                pass


def cpuBusy(window: float = 1.0) -> float:
    """
    The fraction of all CPUs' time spent busy over the next C{window}
    seconds, from C{/proc/stat}.
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle

    total0, idle0 = sample()
    threading.Event().wait(window)
    total1, idle1 = sample()
    spent = total1 - total0
    return 1.0 - (idle1 - idle0) / spent if spent else 0.0


def waitForQuiet(maxBusy: float = 0.15, timeout: float = 60.0) -> float:
    """
    Wait until the machine is mostly idle (other people's tests share it),
    at most C{timeout} seconds; return the last busy fraction seen, which
    the caller reports when it is still above C{maxBusy}.
    """
    deadline = time.monotonic() + timeout
    busy = cpuBusy()
    while busy > maxBusy and time.monotonic() < deadline:
        busy = cpuBusy()
    return busy


def _busySeconds() -> float:
    """
    CPU seconds all CPUs have spent busy since boot (guest time is already
    in user time).
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """
    How much of the machine went to processes that are not ours while a
    block ran: the CPUs' busy time, less this process's, its finished
    children's (curl, hey) and that of the harness's servers.  On a machine
    shared with other people's tests this says whether a figure is fair.

        with ForeignLoad(harness) as foreign:
            measure()
        foreign.fraction  # 0.0 to 1.0 of all CPUs
    """

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.fraction = 0.0

    def _ours(self) -> float:
        spent = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            spent += usage.ru_utime + usage.ru_stime
        for process in self.harness.processes:
            try:
                spent += process.cpuSeconds(group=True)
            except (OSError, ValueError):
                pass
        return spent

    def __enter__(self) -> ForeignLoad:
        self._start = (time.monotonic(), _busySeconds(), self._ours())
        return self

    def __exit__(self, *exc: object) -> None:
        wall0, busy0, ours0 = self._start
        wall = time.monotonic() - wall0
        foreign = (_busySeconds() - busy0) - (self._ours() - ours0)
        capacity = wall * (os.cpu_count() or 1)
        self.fraction = min(1.0, max(0.0, foreign / capacity)) if capacity else 0.0


# The things a benchmark starts.


@attrs.frozen
class Server:
    """
    A started server: its name, base URL and process.
    """

    name: str
    url: str
    process: ManagedProcess


def _twistd() -> list[str]:
    """
    This interpreter's twistd (so the process we watch is regproxy itself,
    not a wrapper such as a pyenv shim).
    """
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.access(script, os.X_OK):
        return [sys.executable, script]
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'twistd'; "
        "from twisted.scripts.twistd import run; run()",
    ]


def _sourceRoot() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Harness:
    """
    Owns a temporary directory and every process started through it, and
    removes them all on exit, on error and on Ctrl-C, SIGTERM or SIGHUP.

        with Harness() as harness:
            registry = harness.startRegistry()
            proxy = harness.startRegproxy(registry.url)
    """

    def __init__(
        self,
        tmpRoot: str | None = None,
        keep: bool = False,
        startTimeout: float = 30.0,
    ) -> None:
        self.tmpRoot = tmpRoot
        self.keep = keep
        self.startTimeout = startTimeout
        self.processes: list[ManagedProcess] = []
        self._started: dict[str, int] = {}
        self.dir = ""
        self._savedHandlers: dict[int, Any] = {}

    def __enter__(self) -> Harness:
        self.dir = tempfile.mkdtemp(prefix="regproxy-bench-", dir=self.tmpRoot)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._savedHandlers[sig] = signal.signal(sig, self._interrupted)
        return self

    def _interrupted(self, signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> None:
        # A second Ctrl-C must not cut the clean-up short; it is bounded.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for process in reversed(self.processes):
                process.stop()
            self.processes.clear()
            if self.keep:
                print(f"kept {self.dir}", file=sys.stderr)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)
            for sig, handler in self._savedHandlers.items():
                signal.signal(sig, handler)

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ManagedProcess:
        index = self._started[name] = self._started.get(name, 0) + 1
        logPath = self.path(f"{name}-{index}.log")
        process = ManagedProcess(name, argv, logPath, env=env, cwd=cwd)
        self.processes.append(process)
        return process

    def stop(self, server: Server) -> None:
        server.process.stop()
        if server.process in self.processes:
            self.processes.remove(server.process)

    def startRegistry(self, name: str = "registry") -> Server:
        """
        A distribution registry in open mode, with filesystem storage in the
        temporary directory and no access log (so it is not the bottleneck).
        """
        port = freePort()
        storage = self.path(f"{name}-storage")
        os.makedirs(storage, exist_ok=True)
        config = self.path(f"{name}.yml")
        with open(config, "w") as f:
            f.write(
                "version: 0.1\n"
                "log:\n"
                "  level: info\n"
                "  accesslog:\n"
                "    disabled: true\n"
                "storage:\n"
                "  filesystem:\n"
                f"    rootdirectory: {storage}\n"
                "  cache:\n"
                "    blobdescriptor: inmemory\n"
                "  delete:\n"
                "    enabled: true\n"
                "http:\n"
                f"  addr: {LOOPBACK}:{port}\n"
                "  secret: regproxy-bench-not-a-secret\n"
            )
        process = self.spawn(name, ["docker-registry", "serve", config])
        process.waitForLine(r"listening on", self.startTimeout)
        return Server(name, f"http://{LOOPBACK}:{port}", process)

    def startRegproxy(
        self,
        upstream: str,
        name: str = "regproxy",
        extraArgs: Sequence[str] = (),
        sourceRoot: str | None = None,
    ) -> Server:
        """
        C{twistd -n --pidfile= regproxy} from the source tree, listening on a
        loopback port the kernel picks (read back from its "starting on"
        line), with its own state directory, run by this interpreter so
        the PID is regproxy's own.
        """
        root = sourceRoot or _sourceRoot()
        stateDir = self.path(f"{name}-state")
        os.makedirs(stateDir, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGPROXY_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        argv = [
            *_twistd(),
            "-n",
            "--pidfile=",
            "--logfile=-",
            "regproxy",
            "--listen",
            f"tcp:0:interface={LOOPBACK}",
            "--upstream",
            upstream,
            "--state-dir",
            stateDir,
            *extraArgs,
        ]
        process = self.spawn(name, argv, env=env, cwd=self.dir)
        match = process.waitForLine(r"starting on (\d+)", self.startTimeout)
        return Server(name, f"http://{LOOPBACK}:{match.group(1)}", process)

    def startNginx(
        self,
        upstream: str,
        name: str = "nginx",
        buffering: bool = True,
        workers: int = 1,
    ) -> Server:
        """
        nginx as a keep-alive HTTP/1.1 reverse proxy to C{upstream}, with
        C{proxy_buffering off} or nginx's default buffers, everything it
        writes under its own prefix in the temporary directory.
        """
        port = freePort()
        prefix = self.path(name)
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        target = urlsplit(upstream)
        # As root, nginx would hand its workers to "nobody", who cannot
        # enter our private temporary directory.
        user = (
            f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
        )
        temps = "".join(
            f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                "daemon off;\n"
                f"{user}"
                f"worker_processes {workers};\n"
                f"pid {prefix}/nginx.pid;\n"
                f"error_log {prefix}/logs/error.log notice;\n"
                "error_log stderr notice;\n"
                "events { worker_connections 1024; }\n"
                "http {\n"
                "    access_log off;\n"
                f"{temps}"
                "    upstream registry {\n"
                f"        server {target.hostname}:{target.port or 80};\n"
                "        keepalive 32;\n"
                "    }\n"
                "    server {\n"
                f"        listen {LOOPBACK}:{port};\n"
                "        client_max_body_size 0;\n"
                "        location / {\n"
                "            proxy_pass http://registry;\n"
                "            proxy_http_version 1.1;\n"
                '            proxy_set_header Connection "";\n'
                "            proxy_set_header Host $http_host;\n"
                + ("" if buffering else "            proxy_buffering off;\n")
                + "        }\n"
                "    }\n"
                "}\n"
            )
        process = self.spawn(
            name, ["nginx", "-e", "stderr", "-p", prefix + "/", "-c", conf]
        )
        process.waitForLine(r"start worker process", self.startTimeout)
        return Server(name, f"http://{LOOPBACK}:{port}", process)
