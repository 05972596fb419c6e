# memproxy: OpenAI-compatible chat proxy with per-user memory.
# CPU-only image. Build: docker build -t memproxy .
# Run:   docker run -p 8000:8000 -v memproxy-data:/data -e MEMPROXY_ADMIN_KEY=... memproxy
# (without an admin key the memory API answers loopback clients only: nobody outside).
FROM python:3.11-slim

# The distribution is memproxy-server ("memproxy" on PyPI is another project); the command
# and the image are memproxy.
LABEL org.opencontainers.image.title="memproxy-server" \
      org.opencontainers.image.description="OpenAI-compatible chat proxy with per-user memory"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /app

# torch first, pinned and from the CPU index, so the resolver never pulls a
# multi-GB CUDA build. Must equal the torch upper bound in pyproject.toml.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY proxy/ ./proxy/
COPY config.yaml ./config.yaml
RUN pip install --no-cache-dir ".[onnx]"

# Non-root user; /data is created and chowned before VOLUME so a fresh named
# volume inherits the ownership.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin memproxy \
    && mkdir -p /data /opt/memproxy/models \
    && chown memproxy:memproxy /data /opt/memproxy/models

ENV MEMPROXY_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    MEMPROXY_CONFIG=/app/config.yaml \
    MEMPROXY_EMBEDDING__MODELS_DIR=/opt/memproxy/models

# The embedding model's ONNX export, made now (outside the volume, so a bind-mounted data
# dir has it too): a container starts in seconds instead of exporting at first start.
USER memproxy
RUN memproxy export-model

VOLUME /data
EXPOSE 8000

# Healthy = ready: /readyz answers 503 while the memory store, the job database or the
# workers are down (chats are still forwarded, without memory). Orchestrators with separate
# probes: liveness /healthz, readiness /readyz. slim has no curl: probe with the standard
# library (urlopen raises on non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["memproxy", "serve", "--host", "0.0.0.0", "--port", "8000"]
