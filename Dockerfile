# regproxy in a container: twistd in the foreground, logging to stdout, as a
# numeric non-root user.  Docker lets unprivileged processes in a container
# bind ports below 1024 (net.ipv4.ip_unprivileged_port_start=0), so the
# defaults (port 80, and 5000) work unchanged.  A runtime that does not
# (most Kubernetes runtimes, rootless podman) needs either that sysctl set
# for the pod/container, or REGPROXY_LISTEN="regproxy-tcp:8080 regproxy-tls:5000"
# with the port mapped (deploy/kubernetes does this).
FROM python:3.11-slim

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY regproxy ./regproxy
COPY twisted ./twisted
RUN pip install --no-cache-dir . && rm -rf /src

RUN mkdir -p /var/lib/regproxy && chown 10001:10001 /var/lib/regproxy
ENV REGPROXY_STATE_DIR=/var/lib/regproxy
VOLUME /var/lib/regproxy
USER 10001:10001
WORKDIR /var/lib/regproxy
EXPOSE 80 5000 9100

# `regproxy health` reads the same REGPROXY_* settings as the daemon and asks
# /_health on its first listener, wherever --listen put it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["regproxy", "health", "--timeout", "4"]

# --pidfile= : a restarted container must not find a stale twistd.pid and
# refuse to start.
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "regproxy"]
