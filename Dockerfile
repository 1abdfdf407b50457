# LFM Stream image: one image for the init (prepare), producer, learner and recall_api services.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app

# Dependencies first (cached until pyproject.toml changes): install the project's dependency list
# with empty package directories, then the real sources on top without dependencies.
COPY pyproject.toml README.md ./
RUN mkdir -p lfm_stream producer learner ps_redis recall_api \
    && for p in lfm_stream producer learner ps_redis recall_api; do touch $p/__init__.py; done \
    && pip install . \
    && pip uninstall -y lfm-stream

COPY lfm_stream ./lfm_stream
COPY producer ./producer
COPY learner ./learner
COPY ps_redis ./ps_redis
COPY recall_api ./recall_api
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 lfm \
    && mkdir -p /data /cache \
    && chown -R lfm:lfm /data /cache /app

USER lfm
ENV LFM_DATA_DIR=/data/prepared \
    LFM_CACHE_DIR=/cache
CMD ["python", "-m", "lfm_stream.cli", "--help"]
