# The Mailpipe image: every data-plane role (`mailpipe <command>`) and the operator
# (`mailpipe-operator`), installed from this repository with the locked dependency versions.
#
#   docker build -t mailpipe/mailpipe:0.1.0 .            (or `make images`)
#   docker run --rm mailpipe/mailpipe:0.1.0 --help

# The builder installs into a virtual environment, which the final stage copies without pip's
# caches, the build backend or the sources.
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/mailpipe
ENV PATH=/opt/mailpipe/bin:$PATH

WORKDIR /src
# pyproject.toml names README.md as the package's readme, so the build needs it too.
COPY pyproject.toml requirements.lock README.md ./
COPY services ./services
COPY operator ./operator
# A regular (non-editable) install, constrained to the lock file's versions; the lock file
# also lists development tools, which `-c` leaves out because nothing requires them.
RUN pip install -c requirements.lock .


FROM python:3.11-slim

LABEL org.opencontainers.image.title="Mailpipe" \
      org.opencontainers.image.description="High-volume email sending on RabbitMQ, MongoDB and SMTP, with a Kubernetes operator" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/mailpipe/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric user, so that Kubernetes can check runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 mailpipe \
    && useradd --system --uid 10001 --gid mailpipe --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mailpipe

COPY --from=builder /opt/mailpipe /opt/mailpipe

USER 10001:10001
WORKDIR /tmp
# Long-running roles serve Prometheus metrics on this port (EmailPipeline spec.monitoring.metricsPort).
EXPOSE 9100

ENTRYPOINT ["mailpipe"]
CMD ["--help"]
