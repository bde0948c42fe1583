# The one Tessera image: serving, the Dagster code location and Dagster runs all use it (k8s/).
FROM python:3.11-slim-bookworm
# A JRE for JPype (in-process MOJO scoring) and for H2O training runs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir uv && uv pip install --system --no-cache --compile-bytecode -r requirements.lock
COPY pyproject.toml README.md ./
COPY shardctl shardctl
COPY serving serving
COPY orchestration orchestration
RUN uv pip install --system --no-cache --compile-bytecode --no-deps .
RUN useradd --system --uid 10001 tessera
USER 10001
ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
CMD ["python", "-m", "serving"]
