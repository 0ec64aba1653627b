# soulspot-jobs: one image for the worker and the web (health, metrics, operator page) processes.
# Every setting (REDIS_URL, SLSKD_*, SPOTIFY_*, MUSICBRAINZ_*, CIRCUIT_BREAKER_*, RECOVERY_*, ...)
# comes from the environment at run time (docker-compose.yml passes .env); no setting or secret is
# ever part of the image. Only the runtime dependencies are installed, at the versions of
# constraints.txt (`make constraints`); the test and development tools (the dev extra) never are.
# An exact base image, Python 3.11 as the project's tests run it, on Debian bookworm.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system soulspot \
    && useradd --system --gid soulspot --create-home --home-dir /home/soulspot \
       --shell /usr/sbin/nologin soulspot

# On x86-64 every dependency is a prebuilt wheel, so no compiler is installed; the sources and the
# build backend's temporary environment are gone once pip is done.
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY soulspot_jobs ./soulspot_jobs
RUN pip install -c constraints.txt . && rm -rf /src

USER soulspot
WORKDIR /home/soulspot
EXPOSE 8000

# The default command's health: GET /health answers 200, or 503 with status "degraded" (an
# upstream's breaker is OPEN: this process is fine and restarting it would not help). A container
# running `soulspot-jobs worker` instead serves no HTTP: docker-compose.yml gives it its own check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import http.client, json, sys; c = http.client.HTTPConnection('127.0.0.1', 8000, timeout=3); c.request('GET', '/health'); r = c.getresponse(); b = r.read(); sys.exit(0 if r.status == 200 or (r.status == 503 and json.loads(b).get('status') == 'degraded') else 1)"]

CMD ["soulspot-jobs", "serve", "--host", "0.0.0.0", "--port", "8000"]
