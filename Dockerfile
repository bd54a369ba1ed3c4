# regproxy in a container: twistd in the foreground, logging to stdout, as a
# numeric non-root user.  Docker lets unprivileged processes in a container
# bind ports below 1024 (net.ipv4.ip_unprivileged_port_start=0), so the
# defaults (port 80, and 5000) work unchanged.
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
EXPOSE 80 5000

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:80/_health', timeout=4).status != 200)"

# --pidfile= : a restarted container must not find a stale twistd.pid and
# refuse to start.
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "--logfile=-", "regproxy"]
