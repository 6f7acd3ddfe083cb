# syntax=docker/dockerfile:1
#
# Three images from one file (docs/local-and-containers.md):
#   api     every function's routes under uvicorn (local.app:app), port 8000
#   worker  the notify Celery worker with its beat schedule (the outbox relay)
#   lambda  AWS Lambda container image of the functions; pick the handler at deploy
#           time, e.g. ImageConfig.Command = ["functions.booking.handler.handler"]
#
#   docker build --target api -t ticketing-api .
#   docker buildx bake            # every target for linux/amd64 and linux/arm64
#
# Wheels only (--only-binary): no compiler in any stage, so none can leak into a final
# image, and a dependency without a wheel for an architecture fails the build loudly.
# Application bytecode is compiled with unchecked hashes: the images are immutable, and
# Lambda's read-only filesystem could never write a .pyc at cold start.

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

# ---- per-target requirement lists, derived from pyproject.toml ------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS requirements
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py api > api.txt \
 && python requirements.py worker > worker.txt \
 && python requirements.py lambda > lambda.txt

# ---- virtualenvs (one per long-running target) ------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS venv-api
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=requirements /src/api.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS venv-worker
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=requirements /src/worker.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --only-binary=:all: -r /tmp/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# ---- application code, compiled --------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS source
WORKDIR /app
COPY shared ./shared
COPY functions ./functions
COPY local/__init__.py local/app.py ./local/
RUN python -m compileall -q --invalidation-mode unchecked-hash /app

# ---- common runtime: slim Python, non-root user, no build tools ------------------------
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    APP_ENV=production
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin app
WORKDIR /app

# ---- api: uvicorn serving every function's routes --------------------------------------
FROM runtime AS api
COPY --from=venv-api /opt/venv /opt/venv
COPY --from=source /app /app
USER 10001:10001
EXPOSE 8000
# UVICORN_WORKERS, UVICORN_LOG_LEVEL etc. are read from the environment by uvicorn.
# --no-proxy-headers: the app alone decides which proxies may name the client
# (TRUSTED_PROXIES, shared/web/client_ip.py); uvicorn must not rewrite the peer first.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]
CMD ["uvicorn", "local.app:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]

# ---- worker: Celery consumer plus the relay's beat schedule ----------------------------
FROM runtime AS worker
COPY --from=venv-worker /opt/venv /opt/venv
COPY --from=source /app /app
USER 10001:10001
# Answers only if this container's own worker node replies (not any worker on the broker).
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "celery -A functions.notify.worker inspect ping --destination \"celery@$HOSTNAME\" --timeout 10 > /dev/null"]
CMD ["celery", "-A", "functions.notify.worker", "worker", "--beat", "--loglevel=INFO", "--schedule=/tmp/celerybeat-schedule"]

# ---- lambda: the functions as an AWS Lambda container image ----------------------------
FROM public.ecr.aws/lambda/python:${PYTHON_VERSION} AS lambda-deps
COPY --from=requirements /src/lambda.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --only-binary=:all: \
    --target /opt/deps -r /tmp/requirements.txt

FROM public.ecr.aws/lambda/python:${PYTHON_VERSION} AS lambda
COPY --from=lambda-deps /opt/deps ${LAMBDA_TASK_ROOT}
COPY shared ${LAMBDA_TASK_ROOT}/shared
COPY functions ${LAMBDA_TASK_ROOT}/functions
RUN python -m compileall -q -f --invalidation-mode unchecked-hash "${LAMBDA_TASK_ROOT}"
# Lambda runs the image as its own unprivileged user whatever USER says.
# Default handler; each function overrides it (ImageConfig.Command in the SAM template).
CMD ["functions.users.handler.handler"]
