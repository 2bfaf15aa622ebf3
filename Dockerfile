# syntax=docker/dockerfile:1
# Regula: one image for the API, a Dask scheduler and Dask workers; the command picks the role.
#   API (default):  regula serve --host 0.0.0.0          (applies migrations, then serves on :8000)
#   scheduler:      dask scheduler                       (:8786, dashboard/health on :8787)
#   worker:         dask worker tcp://scheduler:8786 --nthreads 1
# Nothing secret is baked in: database credentials and API keys come from the environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this layer is rebuilt only when
# pyproject.toml changes, not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --requirement requirements.txt

# Then the source, installed without touching the dependencies resolved above. A regular (not
# editable) install, so the runtime stage needs only the virtualenv.
COPY README.md ./
COPY app ./app
COPY engine ./engine
COPY migrations ./migrations
COPY bench ./bench
RUN pip install --no-deps .


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="regula" \
      org.opencontainers.image.description="REST service training regularized NumPy models, with exact L1 sparsity"

# One BLAS thread per process: Dask workers run one job per thread and must not oversubscribe cores.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    REGULA_DATABASE_URL=sqlite:////data/regula.db \
    REGULA_DATA_DIR=/data/artifacts \
    REGULA_PORT=8000

RUN groupadd --system --gid 10001 regula \
    && useradd --system --uid 10001 --gid regula --create-home --home-dir /home/regula regula \
    && mkdir -p /data/artifacts \
    && chown -R regula:regula /data

COPY --from=build /opt/venv /opt/venv

WORKDIR /home/regula
USER 10001:10001

# The SQLite file and the dataset artifacts; a named volume mounted here starts as a copy of this
# directory, so it is writable by the non-root user.
VOLUME ["/data"]
EXPOSE 8000 8786 8787

# No curl in the slim image: the interpreter checks /healthz itself. Scheduler and worker containers
# override this (see docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('REGULA_PORT', '8000') + '/healthz', timeout=4)"]

CMD ["regula", "serve", "--host", "0.0.0.0"]
