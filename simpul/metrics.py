"""The catalogue of Simpul's Prometheus metrics: every metric the code may touch is here."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)

EVENTS_RECEIVED = Counter(
    "simpul_events_received_total",
    "Messages read from simpul.in.<type>, before any check.",
    ["type", "agency"],
)
EVENTS_VALID = Counter(
    "simpul_events_valid_total",
    "Events that passed every check and were forwarded to simpul.valid.<type>.",
    ["type", "agency"],
)
EVENTS_DEAD_LETTERED = Counter(
    "simpul_events_dead_lettered_total",
    "Messages sent to simpul.dlq.<type>, by the stage and the short reason code.",
    ["type", "agency", "stage", "reason"],
)
DUPLICATES_DROPPED = Counter(
    "simpul_duplicates_dropped_total",
    "Copies of an already seen ce_id: dropped by the dedup window, or absorbed by the store.",
    ["type", "stage"],
)
EVENTS_STORED = Counter(
    "simpul_events_stored_total",
    "Events newly written to the central store's event_log.",
    ["type"],
)
STORE_BATCH_SIZE = Histogram(
    "simpul_store_batch_events",
    "Events per central store write.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
STORE_BATCH_DURATION = Histogram(
    "simpul_store_batch_duration_seconds",
    "Time to write one batch to the central store.",
    buckets=_LATENCY_BUCKETS,
)
STORE_ERRORS = Counter(
    "simpul_store_errors_total",
    "Failed central store writes: transient (retried) or row (dead-lettered).",
    ["kind"],
)
STORE_UP = Gauge(
    "simpul_store_up",
    "1 while the central store accepts writes, 0 while the worker is retrying.",
)
PUBLISH_TO_STORE_LATENCY = Histogram(
    "simpul_publish_to_store_latency_seconds",
    "From the producer's Kafka timestamp to the commit of the store write.",
    ["type"],
    buckets=_LATENCY_BUCKETS,
)
STAGE_CPU = Counter(
    "simpul_stage_cpu_seconds_total",
    "CPU seconds a stream process spent per stage (thread CPU time of the thread doing it): "
    "validate (with decode), forward (dedup, store rows, forwards), fanout (filter, project, "
    "encode), store, audit, produce (building the producer's batches; the joins report it too).",
    ["stage"],
)
CONSUMER_LAG = Gauge(
    "simpul_consumer_lag_messages",
    "Messages behind the partition's high watermark after the last batch.",
    ["topic", "partition"],
)

DLQ_WINDOW_SHARE = Gauge(
    "simpul_dlq_window_share",
    "Share of the type's last dlq_limit_window messages that went to the dead-letter topic.",
    ["type"],
)
DLQ_LIMIT_EXCEEDED = Gauge(
    "simpul_dlq_limit_exceeded",
    "1 while more than dlq_limit_share of the type's window was dead-lettered (alerting).",
    ["type"],
)
TYPE_PAUSED = Gauge(
    "simpul_type_paused",
    "1 while the worker holds the type's partitions paused by the dead-letter limit.",
    ["type"],
)

# --- joins ---
JOIN_DERIVED = Counter(
    "simpul_join_derived_total",
    "Derived events a join published to simpul.in.<output type>.",
    ["join"],
)
JOIN_WAITS = Counter(
    "simpul_join_waits_total",
    "Left events that had to wait because their right side had not arrived.",
    ["join"],
)
JOIN_PENDING = Gauge(
    "simpul_join_pending",
    "Left events waiting for their right side now (on this process's partitions).",
    ["join"],
)
JOIN_EXPIRED = Counter(
    "simpul_join_expired_total",
    "Left events whose wait ran out, by what the join did: dead_letter, emit or drop.",
    ["join", "outcome"],
)
JOIN_RESTORED = Counter(
    "simpul_join_restored_records_total",
    "Changelog records read to rebuild join state after partitions were assigned.",
    ["join"],
)
# --- schema registry ---
REGISTRY_REQUESTS = Counter(
    "simpul_registry_requests_total",
    "Requests the schema registry answered, by method and HTTP status.",
    ["method", "status"],
)
REGISTRY_UNAVAILABLE = Counter(
    "simpul_registry_unavailable_total",
    "Batches retried because the schema registry did not answer and the id was not cached.",
)
# --- operations ---
AGENCY_LAST_EVENT = Gauge(
    "simpul_agency_last_event_timestamp_seconds",
    "Unix time the agency's newest event reached the central store (from the scorecard).",
    ["agency"],
)
AGENCY_CADENCE = Gauge(
    "simpul_agency_cadence_seconds",
    "How often the agency is expected to publish, declared in the topology.",
    ["agency"],
)
AGENCY_CONNECTED = Gauge(
    "simpul_agency_connected",
    "1 if the agency published within its cadence, else 0 (agencies expected to publish).",
    ["agency"],
)
# --- connectors ---
CONNECTOR_RECORDS_READ = Counter(
    "simpul_connector_records_read_total",
    "Records a connector read from its source (rows, lines, objects), before any check.",
    ["connector"],
)
CONNECTOR_RECORDS_PUBLISHED = Counter(
    "simpul_connector_records_published_total",
    "Records a connector published to simpul.in.<type> and the broker acknowledged.",
    ["connector"],
)
CONNECTOR_RECORDS_FAILED = Counter(
    "simpul_connector_records_failed_total",
    "Records a connector could not publish: rejected by a check, dead-lettered or failed.",
    ["connector"],
)
CONNECTOR_LAST_SUCCESS = Gauge(
    "simpul_connector_last_success_timestamp_seconds",
    "Unix time of the connector's last batch acknowledged by the broker.",
    ["connector"],
)
CONNECTOR_FILES_REFUSED = Counter(
    "simpul_connector_files_refused_total",
    "Files a file-drop connector refused to read: symlink, not_regular or too_large.",
    ["connector", "reason"],
)
CONNECTOR_RUNNING = Gauge(
    "simpul_connector_running",
    "1 while the connector's task is RUNNING, 0 when paused, failed or stopped.",
    ["connector"],
)
INGRESS_REQUESTS = Counter(
    "simpul_ingress_requests_total",
    "Requests to the HTTP ingress by event type, agency and HTTP status.",
    ["type", "agency", "status"],
)
INGRESS_EVENTS_PUBLISHED = Counter(
    "simpul_ingress_events_published_total",
    "Events the HTTP ingress published and the broker acknowledged.",
    ["type", "agency"],
)
# --- subscriptions, webhook delivery, audit ---
_WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

FANOUT_EVENTS = Counter(
    "simpul_fanout_events_total",
    "Events a subscription considered: sent to simpul.out.<agency>, filtered out, or failed "
    "(its projection could not apply).",
    ["subscription", "type", "outcome"],
)
DELIVERIES = Counter(
    "simpul_deliveries_total",
    "Events delivered to an agency, by channel (inbox, webhook) and outcome "
    "(delivered, dead_lettered).",
    ["agency", "channel", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "simpul_webhook_request_duration_seconds",
    "Duration of one webhook POST, any response.",
    ["agency"],
    buckets=_WEBHOOK_BUCKETS,
)
WEBHOOK_RETRIES = Counter(
    "simpul_webhook_retries_total",
    "Webhook attempts that will be retried, by reason (status code, timeout, connect).",
    ["agency", "reason"],
)
WEBHOOK_PENDING = Gauge(
    "simpul_webhook_pending_messages",
    "Messages consumed but not yet delivered or dead-lettered, per endpoint agency.",
    ["agency"],
)
AUDIT_ROWS = Counter(
    "simpul_audit_rows_total",
    "Rows appended to the delivery audit log.",
    ["channel"],
)
