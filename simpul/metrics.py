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
    "simpul_store_batch_size",
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
CONSUMER_LAG = Gauge(
    "simpul_consumer_lag_messages",
    "Messages behind the partition's high watermark after the last batch.",
    ["topic", "partition"],
)

# --- subscriptions, webhook delivery, audit ---
_WEBHOOK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

FANOUT_EVENTS = Counter(
    "simpul_fanout_events_total",
    "Events a subscription considered: sent to simpul.out.<agency>, or filtered out.",
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
