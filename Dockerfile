# LFM Stream images, one target per role; each installs its pyproject extra only:
#   docker build --target producer -t lfm-stream-producer .   # prepare + replay (TensorFlow reads the shards)
#   docker build --target learner  -t lfm-stream-learner .    # the online learner (TensorFlow)
#   docker build --target recall   -t lfm-stream-recall .     # the recall service (FastAPI; no TensorFlow)
# docker-compose.yml builds the three.

FROM python:3.11.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
RUN useradd --create-home --uid 10001 lfm \
    && mkdir -p /data /cache \
    && chown lfm:lfm /data /cache

# The project metadata (LICENSE: pyproject's license-files) and empty packages: a role's dependency layer
# below is rebuilt only when these change, not when the sources do.
COPY pyproject.toml README.md LICENSE ./
RUN mkdir -p lfm_stream producer learner ps_redis recall_api \
    && for p in lfm_stream producer learner ps_redis recall_api; do touch $p/__init__.py; done

# The sources, copied into each role after its dependencies.
FROM scratch AS sources
COPY lfm_stream /lfm_stream
COPY producer /producer
COPY learner /learner
COPY ps_redis /ps_redis
COPY recall_api /recall_api

FROM base AS producer
RUN pip install ".[producer]" && pip uninstall -y lfm-stream
COPY --from=sources / ./
RUN pip install --no-deps . && chown -R lfm:lfm /app
USER lfm
ENV LFM_DATA_DIR=/data/prepared \
    LFM_CACHE_DIR=/cache
CMD ["python", "-m", "producer.replay", "--help"]

FROM base AS learner
RUN pip install ".[learner]" && pip uninstall -y lfm-stream
COPY --from=sources / ./
RUN pip install --no-deps . && chown -R lfm:lfm /app
USER lfm
ENV LFM_DATA_DIR=/data/prepared \
    LFM_CACHE_DIR=/cache
CMD ["python", "-m", "learner", "--help"]

FROM base AS recall
RUN pip install ".[recall]" && pip uninstall -y lfm-stream
COPY --from=sources / ./
RUN pip install --no-deps . && chown -R lfm:lfm /app
USER lfm
ENV LFM_DATA_DIR=/data/prepared \
    LFM_CACHE_DIR=/cache
CMD ["python", "-m", "recall_api", "--help"]
