# authdb as a container: `authdb serve` as an unprivileged user.
# Not built by the test suite (no container engine in CI); everything it runs is what the tests run.
# Build:  docker build -t authdb .
# Run:    docker run -p 8000:8000 -e AUTHDB_SECRET_KEY=... -e AUTHDB_PUBLIC_URL=https://auth.example.com authdb

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# A wheel of authdb and every dependency, so the runtime stage needs no compiler and no network.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[postgres,redis,passkeys,metrics]'

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'authdb[postgres,redis,passkeys,metrics]' \
    && useradd --system --uid 10001 --home-dir /data --create-home authdb
USER authdb
WORKDIR /data
# The embedded SQLite default lives in /data (mount a volume there); set AUTHDB_DATABASE_URL
# for PostgreSQL, then run `authdb migrate` once per upgrade (serve refuses an old schema).
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["authdb"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
