"""The one settings object, read from `SIMPUL_*` environment variables, validated at start."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_PORT = 19092
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every setting has a default that works on the embedded stack (Tansu + SQLite)."""

    model_config = SettingsConfigDict(env_prefix="SIMPUL_", extra="ignore")

    kafka_bootstrap: str = Field(
        default=f"127.0.0.1:{DEFAULT_BROKER_PORT}",
        description="Kafka bootstrap servers host:port[,host:port]; default: the embedded broker",
    )
    broker_engine: Literal["embedded", "kafka"] = Field(
        default="embedded",
        description="Which broker SIMPUL_KAFKA_BOOTSTRAP points at: `embedded` (Tansu, memory "
        "only) or `kafka` (Apache Kafka); chooses the client tuning below",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How every Simpul client talks to the broker: PLAINTEXT (the embedded "
        "broker), SASL_PLAINTEXT or SASL_SSL (Apache Kafka with users and ACLs)",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "PLAIN"] = Field(
        default="SCRAM-SHA-512",
        description="SASL mechanism: SCRAM-SHA-512 for agencies and processes, PLAIN for the "
        "broker's admin user",
    )
    kafka_username: str = Field(
        default="", description="This process's SASL user (see `simpul acls apply`)"
    )
    kafka_password: str = Field(default="", description="Password of SIMPUL_KAFKA_USERNAME")
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA certificate (PEM) that signed the broker's TLS certificate"
    )
    kafka_users_file: Path = Field(
        default=PROJECT_ROOT / "var" / "secrets" / "kafka-users.json",
        description="SASL users and passwords `simpul acls apply` creates (mode 0600; never "
        "committed)",
    )
    kafka_data_dir: Path = Field(
        default=PROJECT_ROOT / "var" / "kafka",
        description="Log directories of `simpul broker --engine kafka` (kept across restarts)",
    )
    kafka_cache_dir: Path | None = Field(
        default=None,
        description="Where Apache Kafka's jars are cached after Maven resolves them; empty: "
        "~/.cache/simpul/kafka",
    )
    broker_port: int = Field(
        default=DEFAULT_BROKER_PORT, ge=1, le=65535, description="Port of `simpul broker`"
    )
    database_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'var' / 'simpul.db'}",
        description="SQLAlchemy URL of the central store (PostgreSQL in production)",
    )
    topology_file: Path = Field(
        default=PROJECT_ROOT / "topology" / "palu.yaml", description="Topology YAML"
    )
    schemas_dir: Path = Field(default=PROJECT_ROOT / "schemas", description="Avro .avsc files")
    data_dir: Path = Field(
        default=PROJECT_ROOT / "var", description="Local working files (Faust data, logs)"
    )
    keys_dir: Path = Field(
        default=PROJECT_ROOT / "var" / "keys",
        description="Private signing keys of this installation's agencies and gateways "
        "(mode 0600; never in the repository or the image)",
    )
    public_keys_file: Path | None = Field(
        default=None,
        description="Public keys of every signer (YAML, committed); empty: "
        "<topology name>.keys.yaml beside the topology file",
    )
    bind_host: str = Field(
        default="127.0.0.1",
        description="Address every Simpul HTTP server listens on (0.0.0.0 inside a container)",
    )
    http_token: str = Field(
        default="",
        description="Bearer token of the status, health and connect REST endpoints; empty: "
        "generated once into data_dir/http-token (mode 0600)",
    )
    metrics_open: bool = Field(
        default=False,
        description="Serve /metrics without the token (for a Prometheus on a private network)",
    )
    http_max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body any Simpul HTTP endpoint reads (the ingress has its own)",
    )
    worker_web_port: int = Field(
        default=6066, ge=1, le=65535, description="Worker HTTP port (/metrics, /health)"
    )
    worker_id: str = Field(default="simpul", description="Faust app id = consumer group")
    batch_size: int = Field(default=5000, ge=1, description="Events per processing batch")
    batch_seconds: float = Field(
        default=0.1, gt=0, description="Longest wait to fill a batch before processing it"
    )
    dedup_window_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        description="Memory per partition for the ce_ids remembered to drop duplicates "
        "(128 bytes an id, whatever its length: 8 MiB is the last 32 768 to 65 536 ids); "
        "0 turns the window off (the store still drops copies)",
    )
    dlq_limit_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Dead-letter limit: above this share of a type's window dead-lettered, "
        "simpul_dlq_limit_exceeded turns 1 (and the type pauses with dlq_limit_pause)",
    )
    dlq_limit_window: int = Field(
        default=1000, ge=1, description="Dead-letter limit: messages per type in the window"
    )
    dlq_limit_min_events: int = Field(
        default=100, ge=1, description="Dead-letter limit: fewest messages seen before it applies"
    )
    dlq_limit_pause: bool = Field(
        default=False,
        description="Pause a type over the dead-letter limit instead of dead-lettering on",
    )
    dlq_limit_cooldown_s: float = Field(
        default=600.0,
        gt=0,
        description="A type paused by the dead-letter limit resumes after this long "
        "(or at once with `simpul dlq resume <type>`)",
    )
    session_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Consumer session timeout; empty: per engine (embedded 6 s, kafka 10 s)",
    )
    rebalance_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Consumer rebalance timeout; empty: per engine (embedded 6 s, kafka 30 s)",
    )
    fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=1,
        description="Longest wait of a consumer fetch for data; empty: per engine (embedded "
        "100 ms, because Tansu answers a fetch only when it expires; kafka 500 ms)",
    )
    store_retry_max_s: float = Field(
        default=30.0, gt=0, description="Longest back-off between central store retries"
    )
    stop_timeout_s: float = Field(
        default=30.0, gt=0, description="On SIGTERM, longest wait for the batch in flight"
    )
    log_level: str = Field(default="info", description="Worker log level")
    registry_url: str = Field(
        default="http://127.0.0.1:8081",
        description="Schema registry base URL used by workers, publishers and connectors",
    )
    registry_port: int = Field(
        default=8081, ge=1, le=65535, description="Port of `simpul registry` (Confluent's default)"
    )
    ingress_port: int = Field(
        default=8080, ge=1, le=65535, description="Port of `simpul ingress` (HTTP event ingress)"
    )
    connect_port: int = Field(
        default=8083,
        ge=1,
        le=65535,
        description="Port of the connector runtime's REST API (Kafka Connect's default)",
    )
    deliver_web_port: int = Field(
        default=6067, ge=1, le=65535, description="Port of `simpul deliver` (/metrics, /health)"
    )
    # --- joins ---
    join_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a left event waits for its right side before the join's "
        "on_timeout applies (a join's own wait_s overrides it)",
    )
    join_check_s: float = Field(
        default=1.0, gt=0, description="How often waiting left events are checked for expiry"
    )
    joins_web_port: int = Field(
        default=6068, ge=1, le=65535, description="Port of `simpul joins` (/metrics, /health)"
    )
    # --- schema registry ---
    registry_admin_token: str = Field(
        default="",
        description="Bearer token for registry writes; empty: generated once into "
        "data_dir/registry-admin-token (mode 0600)",
    )
    registry_read_auth: bool = Field(
        default=False, description="Require the admin token for registry reads too"
    )
    registry_cache_ttl_s: float = Field(
        default=5.0, gt=0, description="How long clients trust a cached latest version"
    )
    registry_timeout_s: float = Field(
        default=5.0, gt=0, description="HTTP timeout of one registry request"
    )
    registry_retry_s: float = Field(
        default=3.0,
        ge=0,
        description="How long a client retries an unreachable registry before using its cache",
    )

    # --- operations ---
    status_refresh_s: float = Field(
        default=30.0,
        gt=0,
        description="How often the worker refreshes the scorecard gauges from the store",
    )
    # --- connectors ---
    connectors_dir: Path = Field(
        default=PROJECT_ROOT / "topology" / "connectors",
        description="Extra connector declarations, one or more per connectors/*.yaml file",
    )
    ingress_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body `simpul ingress` accepts"
    )
    ingress_max_batch: int = Field(
        default=500, ge=1, description="Most events in one `POST /v1/events/{type}` batch"
    )
    ingress_rate_per_s: float = Field(
        default=50.0, gt=0, description="Requests per second allowed per API key (token bucket)"
    )
    ingress_rate_burst: int = Field(
        default=100, ge=1, description="Requests an API key may send at once before 429"
    )
    ingress_idempotency_s: float = Field(
        default=86_400.0,
        gt=0,
        description="How long the ingress remembers a ce_id/Idempotency-Key and its response",
    )
    ingress_idempotency_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        description="Memory per agency for remembered ingress answers (about 400 bytes plus "
        "the ids each); the oldest are forgotten first",
    )
    ingress_ack_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for the broker's ack before answering 503"
    )
    connect_file_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Largest file a file-drop connector reads (its file.max.bytes overrides "
        "it); a larger one goes to failed/ unread",
    )
    connect_poll_interval_s: float = Field(
        default=1.0, gt=0, description="Default pause between polls of a database or directory"
    )
    # --- subscriptions, webhook delivery, audit ---
    fanout_enabled: bool = Field(
        default=True,
        description="Run the fan-out to simpul.out.<agency> inside the worker (when the "
        "topology has subscriptions)",
    )
    audit_key: str = Field(
        default="",
        description="Secret key of the HMAC that hashes NIK/NIP in the delivery audit log; "
        "empty: generated once into data_dir/audit-key (mode 0600)",
    )
    audit_heads_file: Path = Field(
        default=PROJECT_ROOT / "var" / "audit-heads.jsonl",
        description="Where audit writers export their MAC'd chain heads, outside the database "
        "(keep it on other storage; `simpul audit verify` reads it)",
    )
    audit_export_s: float = Field(
        default=10.0, gt=0, description="How often an audit writer exports its chain head"
    )
    deliver_max_attempts: int = Field(
        default=8, ge=1, le=100, description="Webhook attempts before the dead letter"
    )
    deliver_retry_base_s: float = Field(
        default=1.0, gt=0, description="First webhook back-off; doubles per attempt (full jitter)"
    )
    deliver_retry_max_s: float = Field(
        default=300.0, gt=0, description="Longest webhook back-off, also caps Retry-After"
    )
    deliver_timeout_s: float = Field(default=10.0, gt=0, description="Webhook request timeout")
    deliver_concurrency: int = Field(
        default=8, ge=1, le=256, description="Requests in flight per webhook endpoint"
    )
    deliver_max_pending: int = Field(
        default=1000,
        ge=1,
        description="Undelivered messages per endpoint before its partitions are paused",
    )
    # --- console ---
    console_port: int = Field(
        default=8088, ge=1, le=65535, description="Port of `simpul console` (the web console)"
    )
    console_secret: str = Field(
        default="",
        description="Key that signs the console's session cookies; empty: generated once into "
        "data_dir/console-secret (mode 0600)",
    )
    console_users_file: Path | None = Field(
        default=None,
        description="The console's users and password hashes (mode 0600); empty: "
        "data_dir/console-users.json",
    )
    console_connect_url: str = Field(
        default="",
        description="REST API of `simpul connect` the console steers; empty: "
        "http://127.0.0.1:connect_port",
    )
    console_health_urls: str = Field(
        default="",
        description="Readiness probes as name=url pairs, comma-separated (e.g. "
        "worker=http://worker:6066/health); empty: worker, joins, deliver and connect on "
        "127.0.0.1 at their ports",
    )
    console_refresh_s: float = Field(
        default=10.0, gt=0, description="How often console pages refresh their live parts"
    )
    console_session_hours: float = Field(
        default=12.0, gt=0, description="How long a console login lasts"
    )

    @field_validator("audit_key", "registry_admin_token", "http_token")
    @classmethod
    def _no_known_secret(cls, value: str, info: ValidationInfo) -> str:
        from simpul.installation import known_development_secret

        if value and known_development_secret(value):
            raise ValueError(
                f"{info.field_name}: a published development value; generate this "
                "installation's own with `simpul secrets init` (or leave it empty)"
            )
        if value and info.field_name == "audit_key" and len(value) < 16:
            raise ValueError("audit_key: at least 16 characters")
        return value

    def audit_secret(self) -> str:
        """The audit HMAC key: the setting, else this installation's generated one."""
        from simpul.installation import installation_secret

        return self.audit_key or installation_secret(self.data_dir / "audit-key", create=True) or ""

    @property
    def public_keys_path(self) -> Path:
        """Where the public keys are: the setting, or beside the topology file."""
        if self.public_keys_file is not None:
            return self.public_keys_file
        return self.topology_file.with_name(self.topology_file.stem + ".keys.yaml")

    def client_tuning(self) -> ClientTuning:
        """Consumer timings for the engine, each overridable by its own setting."""
        base = ENGINE_TUNING[self.broker_engine]
        session = self.session_timeout_s or base.session_timeout_s
        return ClientTuning(
            session_timeout_s=session,
            rebalance_timeout_s=self.rebalance_timeout_s or base.rebalance_timeout_s,
            fetch_max_wait_ms=self.fetch_max_wait_ms or base.fetch_max_wait_ms,
        )


@dataclass(frozen=True, slots=True)
class ClientTuning:
    """How Simpul's consumers talk to one engine (Kafka clients' names, in milliseconds)."""

    session_timeout_s: float
    rebalance_timeout_s: float
    fetch_max_wait_ms: int

    @property
    def heartbeat_interval_s(self) -> float:
        return min(1.0, self.session_timeout_s / 3)  # members learn of a rebalance fast

    def consumer_options(self) -> dict[str, int]:
        """Keyword arguments for aiokafka's AIOKafkaConsumer."""
        return {
            "session_timeout_ms": int(self.session_timeout_s * 1000),
            "rebalance_timeout_ms": int(self.rebalance_timeout_s * 1000),
            "heartbeat_interval_ms": int(self.heartbeat_interval_s * 1000),
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        }


# Tansu: a new group's first message comes after about half the session timeout, so keep it
# short; its fetch is not answered early when records arrive, so wait briefly.
# Apache Kafka: the broker refuses sessions under 6 s (group.min.session.timeout.ms) and
# answers a fetch as soon as data arrives, so the fetch wait costs no latency.
ENGINE_TUNING = {
    "embedded": ClientTuning(session_timeout_s=6.0, rebalance_timeout_s=6.0, fetch_max_wait_ms=100),
    "kafka": ClientTuning(session_timeout_s=10.0, rebalance_timeout_s=30.0, fetch_max_wait_ms=500),
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_table() -> str:
    """Every setting as a Markdown table (docs/settings.md is this output)."""
    lines = [
        "# Settings",
        "",
        "Generated by `python -m simpul.settings` from `simpul/settings.py`; a test keeps it in",
        "step. Every setting is an environment variable; every default works on the embedded",
        "stack (paths are shown relative to the project).",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = default.relative_to(PROJECT_ROOT).as_posix() or "."
        elif isinstance(default, str) and str(PROJECT_ROOT) in default:
            default = default.replace(str(PROJECT_ROOT) + "/", "")
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `SIMPUL_{name.upper()}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
