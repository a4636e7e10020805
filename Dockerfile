# pgtenantproxy: the proxy alone (`pgtenantproxy serve`), configured by a mounted file.
#
#   docker build -t pgtenantproxy .
#   docker run -p 6432:6432 \
#       -v "$PWD/config.toml:/etc/pgtenantproxy/config.toml:ro" pgtenantproxy
#
# In a container, set `[proxy] listen = "0.0.0.0:6432"` so the published port
# reaches the proxy. Secrets (e.g. UNIFIED_ADMIN_PASSWORD) come in as environment
# variables at run time; nothing secret is baked into the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The README's install step, from the sources only (see .dockerignore).
WORKDIR /build
COPY pyproject.toml README.md ./
COPY pgtenantproxy ./pgtenantproxy
RUN pip install . \
    && cd / && rm -rf /build

RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pgtenantproxy \
    && mkdir -p /etc/pgtenantproxy
USER pgtenantproxy
WORKDIR /

EXPOSE 6432

# Healthy when the proxy answers an SSLRequest ('N', or 'S' with TLS configured)
# on its configured listen port: proves the event loop is serving, not just that
# the kernel accepts connections. Uses only the installed package and the stdlib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import socket; from pgtenantproxy.config import load_config; p = load_config('/etc/pgtenantproxy/config.toml').proxy; s = socket.create_connection(({'0.0.0.0': '127.0.0.1', '::': '::1'}.get(p.host, p.host), p.port), timeout=4); s.sendall(bytes.fromhex('0000000804d2162f')); raise SystemExit(s.recv(1) not in (b'N', b'S'))"]

ENTRYPOINT ["pgtenantproxy", "serve", "--config", "/etc/pgtenantproxy/config.toml"]
