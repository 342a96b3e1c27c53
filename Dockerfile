# vault-bridge agent image.
#
#   docker build -t vault-bridge .
#
# Where no registry is reachable, build on the local Debian base instead
# (scripts/base-image.sh makes it) and let pip reach PyPI from the host network:
#
#   scripts/base-image.sh
#   docker build --network host --build-arg BASE_IMAGE=vault-bridge-base:bookworm \
#       --build-arg CA_CERTIFICATES="$(cat /usr/local/share/ca-certificates/*.crt)" \
#       -t vault-bridge .
#
# Run it with a read-only root filesystem; the config is mounted, the state dir
# and /tmp are volumes:
#
#   docker run --read-only -v ./config.toml:/etc/vault-bridge/config.toml:ro vault-bridge
#
# Works with the plain legacy builder (no BuildKit features are used), which is
# what a docker CLI without the buildx plugin falls back to.

# python:3.11-slim or vault-bridge-base:bookworm; both have `python3` (3.11) and
# ca-certificates.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------
# requirements: what to build with and what to install, read from pyproject.toml.
# The builder copies the two lists, so its cache keys on them, not on every
# edit of pyproject.toml (tool settings, test extras).
# EXTRAS: optional extras to add, comma-separated (`--build-arg EXTRAS=docker` for the docker
# follow-up runner, which needs the Docker SDK; the default image leaves it out).
FROM ${BASE_IMAGE} AS requirements
ARG EXTRAS=
COPY pyproject.toml /src/pyproject.toml
RUN EXTRAS="$EXTRAS" python3 -c 'import os, tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); \
extras = [e for e in os.environ["EXTRAS"].split(",") if e]; \
deps = p["project"]["dependencies"] + [d for e in extras for d in p["project"]["optional-dependencies"][e]]; \
open("/requirements-build.txt", "w").write("\n".join(p["build-system"]["requires"]) + "\n"); \
open("/requirements.txt", "w").write("\n".join(deps) + "\n")'

# ---------------------------------------------------------------------------
# builder: wheels of every dependency (/wheels/deps) and of the project (/wheels/app).
FROM ${BASE_IMAGE} AS builder

# Where pip finds packages. PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST are read by
# pip from the environment when given as build args.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
# Extra CA certificates (PEM text) pip must trust, e.g. of a TLS-intercepting
# egress proxy. Used in this stage only; the final image never sees it.
ARG CA_CERTIFICATES=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PIP_DEFAULT_TIMEOUT=60 \
    PIP_CONFIG_FILE=/opt/build/pip.conf

RUN set -eu; \
    python3 -m venv /opt/build; \
    printf '[global]\n' >/opt/build/pip.conf; \
    if [ -n "$CA_CERTIFICATES" ]; then \
        cat /etc/ssl/certs/ca-certificates.crt >/opt/build/ca.pem 2>/dev/null || :; \
        printf '%s\n' "$CA_CERTIFICATES" >>/opt/build/ca.pem; \
        printf 'cert = /opt/build/ca.pem\n' >>/opt/build/pip.conf; \
    fi

# Dependencies first: a source change does not download them again.
COPY --from=requirements /requirements-build.txt /requirements.txt /opt/build/
RUN /opt/build/bin/pip install -r /opt/build/requirements-build.txt \
    && /opt/build/bin/pip wheel --prefer-binary --wheel-dir /wheels/deps \
        -r /opt/build/requirements.txt

COPY . /src
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels/app /src \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels/lab /src/lab

# ---------------------------------------------------------------------------
# venv: the runtime virtualenv, installed from the wheels alone (no index, no
# compiler). A stage of its own so the wheels never land in a final layer.
# Dependencies first: a source change reinstalls only the project's own wheel.
# pip itself goes last: not needed at run time (nor usable on a read-only root).
FROM ${BASE_IMAGE} AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INDEX=1
COPY --from=builder /wheels/deps /wheels/deps
RUN python3 -m venv /opt/vault-bridge \
    && /opt/vault-bridge/bin/python -m pip install --no-cache-dir /wheels/deps/*.whl
COPY --from=builder /wheels/app /wheels/app
RUN /opt/vault-bridge/bin/python -m pip install --no-cache-dir --find-links /wheels/deps /wheels/app/*.whl \
    && /opt/vault-bridge/bin/python -m pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------
# runtime: the agent image (the default target, see the last stage). No lab code.
FROM ${BASE_IMAGE} AS runtime

# Fixed IDs: volumes and Kubernetes securityContext can rely on them.
RUN set -eu; \
    groupadd --gid 10001 vault-bridge; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/vault-bridge \
        --shell /usr/sbin/nologin vault-bridge; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/vault-bridge; \
    install -d -m 0755 /etc/vault-bridge

COPY --from=venv /opt/vault-bridge /opt/vault-bridge

ENV PATH=/opt/vault-bridge/bin:$PATH \
    VAULT_BRIDGE_CONFIG=/etc/vault-bridge/config.toml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /var/lib/vault-bridge
# State (written atomically) and scratch space stay writable under --read-only.
VOLUME ["/var/lib/vault-bridge", "/tmp"]
# Health and metrics listener ([agent] listen, default 127.0.0.1:9109). Set
# listen = "0.0.0.0:9109" for the port to be reachable from outside the container.
EXPOSE 9109

# No curl in the image: the venv's python asks /healthz, bypassing any
# *_proxy variables. Set VAULT_BRIDGE_HEALTH_URL when [agent] listen moves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/vault-bridge/bin/python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ.get('VAULT_BRIDGE_HEALTH_URL', 'http://127.0.0.1:9109/healthz'), timeout=4)"]

ENTRYPOINT ["vault-bridge"]
CMD ["--log-format", "json", "run"]

# Last, so a new version or revision does not rebuild any layer above.
ARG VERSION=0.0.0+unknown
ARG REVISION=
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="vault-bridge" \
      org.opencontainers.image.description="Certificates from HashiCorp Vault PKI for Redis Enterprise Software clusters: issue, install, verify, renew." \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# ---------------------------------------------------------------------------
# lab (`--target lab`): the runtime plus the lab distribution (simulated cluster, crdb-cli
# stand-in), for the compose example's simulated node. Never the agent's image. The venv has
# no pip, so the pure-Python wheel is unpacked into site-packages (entry points included).
FROM runtime AS lab
COPY --from=builder /wheels/lab /wheels/lab
USER 0:0
RUN /opt/vault-bridge/bin/python -c 'import glob, site, zipfile; \
[zipfile.ZipFile(w).extractall(site.getsitepackages()[0]) for w in glob.glob("/wheels/lab/*.whl")]' \
    && rm -rf /wheels
USER 10001:10001

# ---------------------------------------------------------------------------
# The default target: the runtime image.
FROM runtime
