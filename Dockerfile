# soulspot-jobs: one image for the worker and the web (health and metrics) processes.
# Settings (REDIS_URL, SLSKD_*, SPOTIFY_*, MUSICBRAINZ_*, CIRCUIT_BREAKER_*) come from the
# environment at run time (see docker-compose.yml); no secret is ever part of the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system soulspot \
    && useradd --system --gid soulspot --create-home --home-dir /home/soulspot \
       --shell /usr/sbin/nologin soulspot

WORKDIR /src
COPY pyproject.toml README.md ./
COPY soulspot_jobs ./soulspot_jobs
RUN pip install . && rm -rf /src

USER soulspot
WORKDIR /home/soulspot
EXPOSE 8000
CMD ["soulspot-jobs", "serve", "--host", "0.0.0.0", "--port", "8000"]
