# One image for every Simpul process: registry, worker, joins, ingress, connect, deliver, console.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY simpul ./simpul
COPY streams ./streams
COPY connectors ./connectors
COPY sinks ./sinks
COPY schemas ./schemas
COPY topology ./topology
# Exact versions (requirements/constraints.txt, the ones the tests ran with); the console extra
# for `simpul console`; not the embedded broker's (compose runs Apache Kafka).
RUN pip install --no-cache-dir -c requirements/constraints.txt '.[console]'
# The defaults are relative to the working directory (/app); said here all the same.
ENV SIMPUL_SCHEMAS_DIR=/app/schemas \
    SIMPUL_TOPOLOGY_FILE=/app/topology/palu.yaml \
    SIMPUL_CONNECTORS_DIR=/app/topology/connectors \
    SIMPUL_DATA_DIR=/tmp/simpul
# The console keeps its users file and cookie-signing key here (a volume in compose).
RUN mkdir -p /var/lib/simpul/console && chown nobody /var/lib/simpul/console
USER nobody
ENTRYPOINT ["simpul"]
