"""The one settings object, read from `SIMPUL_*` environment variables, validated at start.

Every setting has one public name, its environment variable without the prefix
(`SIMPUL_KAFKA_BOOTSTRAP` -> `kafka_bootstrap`); that is what the constructor takes
(`Settings(kafka_bootstrap=...)`). Code reads it from its section (`settings.kafka.bootstrap`).
A `SIMPUL_*` variable or keyword that is no setting is an error naming the nearest real one.
Relative paths are relative to the working directory and are made absolute when read.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "SIMPUL_"
DEFAULT_BROKER_PORT = 19092
# The source checkout this module was loaded from. No setting's default hangs off it (an
# installed package's parent is site-packages); only tests and the demo's seed cities use it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _absolute(path: Path) -> Path:
    # Pinned at start, so a child process started elsewhere (Kafka's JVM) sees the same files.
    return path if path.is_absolute() else Path.cwd() / path


LocalPath = Annotated[Path, AfterValidator(_absolute)]


def _absolute_sqlite(url: str) -> str:
    # sqlite:///var/simpul.db is relative to the working directory: pinned like the paths.
    rest = url.removeprefix("sqlite:///")
    if rest == url or rest.startswith("/") or rest in ("", ":memory:") or rest.startswith("?"):
        return url
    return f"sqlite:///{_absolute(Path(rest))}"


def _secret(name: str) -> AfterValidator:
    def check(value: str) -> str:
        from simpul.installation import known_development_secret

        if value and known_development_secret(value):
            raise ValueError(
                f"{name}: a published development value; generate this installation's own "
                "with `simpul secrets init` (or leave it empty)"
            )
        if value and name == "audit_key" and len(value) < 16:
            raise ValueError("audit_key: at least 16 characters")
        return value

    return AfterValidator(check)


class Section(BaseModel):
    """A group of settings. Each field's alias is its public name (the variable without
    SIMPUL_); the field's own name is how code reads it (`settings.<section>.<field>`)."""

    model_config = ConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        validate_by_alias=True,
        validate_by_name=False,
        validate_default=True,  # relative default paths are made absolute too
    )


class KafkaSettings(Section):
    """The broker the clients talk to, and who they are on it."""

    bootstrap: str = Field(
        default=f"127.0.0.1:{DEFAULT_BROKER_PORT}",
        alias="kafka_bootstrap",
        description="Kafka bootstrap servers host:port[,host:port]; default: the embedded broker",
    )
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        alias="kafka_security_protocol",
        description="How every Simpul client talks to the broker: PLAINTEXT (the embedded "
        "broker), SASL_PLAINTEXT or SASL_SSL (Apache Kafka with users and ACLs)",
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "PLAIN"] = Field(
        default="SCRAM-SHA-512",
        alias="kafka_sasl_mechanism",
        description="SASL mechanism: SCRAM-SHA-512 for agencies and processes, PLAIN for the "
        "broker's admin user",
    )
    username: str = Field(
        default="",
        alias="kafka_username",
        description="This process's SASL user (see `simpul acls apply`)",
    )
    password: str = Field(
        default="",
        alias="kafka_password",
        repr=False,  # a secret: never in a log or a traceback
        description="Password of SIMPUL_KAFKA_USERNAME",
    )
    ssl_cafile: LocalPath | None = Field(
        default=None,
        alias="kafka_ssl_cafile",
        description="CA certificate (PEM) that signed the broker's TLS certificate",
    )
    users_file: LocalPath = Field(
        default=Path("var/secrets/kafka-users.json"),
        alias="kafka_users_file",
        description="SASL users and passwords `simpul acls apply` creates (mode 0600; never "
        "committed)",
    )
    data_dir: LocalPath = Field(
        default=Path("var/kafka"),
        alias="kafka_data_dir",
        description="Log directories of `simpul broker --engine kafka` (kept across restarts)",
    )
    cache_dir: LocalPath | None = Field(
        default=None,
        alias="kafka_cache_dir",
        description="Where Apache Kafka's jars are cached after Maven resolves them; empty: "
        "~/.cache/simpul/kafka",
    )


class BrokerSettings(Section):
    """Which engine the bootstrap servers are, and the port `simpul broker` serves on."""

    engine: Literal["embedded", "kafka"] = Field(
        default="embedded",
        alias="broker_engine",
        description="Which broker SIMPUL_KAFKA_BOOTSTRAP points at: `embedded` (Tansu, memory "
        "only) or `kafka` (Apache Kafka); chooses the client tuning below",
    )
    port: int = Field(
        default=DEFAULT_BROKER_PORT,
        ge=1,
        le=65535,
        alias="broker_port",
        description="Port of `simpul broker`",
    )


class ConsumerSettings(Section):
    """How every Simpul consumer reads: its group timings and its batches."""

    session_timeout_s: float | None = Field(
        default=None,
        gt=0,
        alias="session_timeout_s",
        description="Consumer session timeout; empty: per engine (embedded 6 s, kafka 10 s)",
    )
    rebalance_timeout_s: float | None = Field(
        default=None,
        gt=0,
        alias="rebalance_timeout_s",
        description="Consumer rebalance timeout; empty: per engine (embedded 6 s, kafka 30 s)",
    )
    fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=1,
        alias="fetch_max_wait_ms",
        description="Longest wait of a consumer fetch for data; empty: per engine (embedded "
        "100 ms, because Tansu answers a fetch only when it expires; kafka 20 ms)",
    )
    fetch_min_bytes: int = Field(
        default=1,
        ge=1,
        alias="fetch_min_bytes",
        description="Data a consumer fetch waits for, up to its longest wait (more makes "
        "fuller batches under light traffic, at some cost in throughput)",
    )
    batch_size: int = Field(
        default=5000, ge=1, alias="batch_size", description="Events per processing batch"
    )
    batch_seconds: float = Field(
        default=0.1,
        gt=0,
        alias="batch_seconds",
        description="Longest wait to fill a batch before processing it",
    )


class StoreSettings(Section):
    """The central store."""

    database_url: Annotated[str, AfterValidator(_absolute_sqlite)] = Field(
        default="sqlite:///var/simpul.db",
        alias="database_url",
        description="SQLAlchemy URL of the central store (PostgreSQL in production)",
    )
    retry_max_s: float = Field(
        default=30.0,
        gt=0,
        alias="store_retry_max_s",
        description="Longest back-off between central store retries",
    )


class PathSettings(Section):
    """Where the declarations (topology, schemas, connectors) and the local files are."""

    topology_file: LocalPath = Field(
        default=Path("topology/palu.yaml"), alias="topology_file", description="Topology YAML"
    )
    schemas_dir: LocalPath = Field(
        default=Path("schemas"), alias="schemas_dir", description="Avro .avsc files"
    )
    connectors_dir: LocalPath = Field(
        default=Path("topology/connectors"),
        alias="connectors_dir",
        description="Extra connector declarations, one or more per connectors/*.yaml file",
    )
    data_dir: LocalPath = Field(
        default=Path("var"),
        alias="data_dir",
        description="Local working files (Faust data, logs, generated secrets)",
    )
    keys_dir: LocalPath = Field(
        default=Path("var/keys"),
        alias="keys_dir",
        description="Private signing keys of this installation's agencies and gateways "
        "(mode 0600; never in the repository or the image)",
    )
    public_keys_file: LocalPath | None = Field(
        default=None,
        alias="public_keys_file",
        description="Public keys of every signer (YAML, committed); empty: "
        "<topology name>.keys.yaml beside the topology file",
    )


class HttpSettings(Section):
    """What every Simpul HTTP server shares: its address, its token, its body limit."""

    bind_host: str = Field(
        default="127.0.0.1",
        alias="bind_host",
        description="Address every Simpul HTTP server listens on (0.0.0.0 inside a container)",
    )
    token: Annotated[str, _secret("http_token")] = Field(
        default="",
        alias="http_token",
        repr=False,  # a secret: never in a log or a traceback
        description="Bearer token of the status, health and connect REST endpoints; empty: "
        "generated once into data_dir/http-token (mode 0600)",
    )
    metrics_open: bool = Field(
        default=False,
        alias="metrics_open",
        description="Serve /metrics without the token (for a Prometheus on a private network)",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        alias="http_max_body_bytes",
        description="Largest request body any Simpul HTTP endpoint reads (the ingress has its own)",
    )


class ProcessSettings(Section):
    """What every long-running process shares."""

    log_level: str = Field(default="info", alias="log_level", description="Log level")
    stop_timeout_s: float = Field(
        default=30.0,
        gt=0,
        alias="stop_timeout_s",
        description="On SIGTERM, longest wait for the batch in flight",
    )


class WorkerSettings(Section):
    """`simpul worker`: validation, dedup, store, fan-out."""

    web_port: int = Field(
        default=6066,
        ge=1,
        le=65535,
        alias="worker_web_port",
        description="Worker HTTP port (/metrics, /health)",
    )
    id: str = Field(
        default="simpul", alias="worker_id", description="Faust app id = consumer group"
    )
    dedup_window_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=0,
        alias="dedup_window_bytes",
        description="Memory per partition for the ce_ids remembered to drop duplicates "
        "(128 bytes an id, whatever its length: 8 MiB is the last 32 768 to 65 536 ids); "
        "0 turns the window off (the store still drops copies)",
    )
    status_refresh_s: float = Field(
        default=30.0,
        gt=0,
        alias="status_refresh_s",
        description="How often the worker refreshes the scorecard gauges from the store",
    )
    fanout_enabled: bool = Field(
        default=True,
        alias="fanout_enabled",
        description="Run the fan-out to simpul.out.<agency> inside the worker (when the "
        "topology has subscriptions)",
    )


class DlqSettings(Section):
    """The dead-letter limit: when a type's dead letters are an outage, not bad events."""

    limit_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        alias="dlq_limit_share",
        description="Dead-letter limit: above this share of a type's window dead-lettered, "
        "simpul_dlq_limit_exceeded turns 1 (and the type pauses with dlq_limit_pause)",
    )
    limit_window: int = Field(
        default=1000,
        ge=1,
        alias="dlq_limit_window",
        description="Dead-letter limit: messages per type in the window",
    )
    limit_min_events: int = Field(
        default=100,
        ge=1,
        alias="dlq_limit_min_events",
        description="Dead-letter limit: fewest messages seen before it applies",
    )
    limit_pause: bool = Field(
        default=False,
        alias="dlq_limit_pause",
        description="Pause a type over the dead-letter limit instead of dead-lettering on",
    )
    limit_cooldown_s: float = Field(
        default=600.0,
        gt=0,
        alias="dlq_limit_cooldown_s",
        description="A type paused by the dead-letter limit resumes after this long "
        "(or at once with `simpul dlq resume <type>`)",
    )


class RegistrySettings(Section):
    """The schema registry: where clients find it, and how `simpul registry` serves."""

    url: str = Field(
        default="http://127.0.0.1:8081",
        alias="registry_url",
        description="Schema registry base URL used by workers, publishers and connectors",
    )
    port: int = Field(
        default=8081,
        ge=1,
        le=65535,
        alias="registry_port",
        description="Port of `simpul registry` (Confluent's default)",
    )
    admin_token: Annotated[str, _secret("registry_admin_token")] = Field(
        default="",
        alias="registry_admin_token",
        repr=False,  # a secret: never in a log or a traceback
        description="Bearer token for registry writes; empty: generated once into "
        "data_dir/registry-admin-token (mode 0600)",
    )
    read_auth: bool = Field(
        default=False,
        alias="registry_read_auth",
        description="Require the admin token for registry reads too",
    )
    cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        alias="registry_cache_ttl_s",
        description="How long clients trust a cached latest version",
    )
    timeout_s: float = Field(
        default=5.0,
        gt=0,
        alias="registry_timeout_s",
        description="HTTP timeout of one registry request",
    )
    retry_s: float = Field(
        default=3.0,
        ge=0,
        alias="registry_retry_s",
        description="How long a client retries an unreachable registry before using its cache",
    )


class IngressSettings(Section):
    """`simpul ingress`: the HTTP event ingress."""

    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        alias="ingress_port",
        description="Port of `simpul ingress` (HTTP event ingress)",
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        alias="ingress_max_body_bytes",
        description="Largest request body `simpul ingress` accepts",
    )
    max_batch: int = Field(
        default=500,
        ge=1,
        alias="ingress_max_batch",
        description="Most events in one `POST /v1/events/{type}` batch",
    )
    rate_per_s: float = Field(
        default=50.0,
        gt=0,
        alias="ingress_rate_per_s",
        description="Requests per second allowed per API key (token bucket)",
    )
    rate_burst: int = Field(
        default=100,
        ge=1,
        alias="ingress_rate_burst",
        description="Requests an API key may send at once before 429",
    )
    idempotency_s: float = Field(
        default=86_400.0,
        gt=0,
        alias="ingress_idempotency_s",
        description="How long the ingress remembers a ce_id/Idempotency-Key and its response",
    )
    idempotency_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        alias="ingress_idempotency_bytes",
        description="Memory per agency for remembered ingress answers (about 400 bytes plus "
        "the ids each); the oldest are forgotten first",
    )
    ack_timeout_s: float = Field(
        default=30.0,
        gt=0,
        alias="ingress_ack_timeout_s",
        description="Longest wait for the broker's ack before answering 503",
    )


class ConnectSettings(Section):
    """`simpul connect`: the connector runtime."""

    port: int = Field(
        default=8083,
        ge=1,
        le=65535,
        alias="connect_port",
        description="Port of the connector runtime's REST API (Kafka Connect's default)",
    )
    file_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        alias="connect_file_max_bytes",
        description="Largest file a file-drop connector reads (its file.max.bytes overrides "
        "it); a larger one goes to failed/ unread",
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        alias="connect_poll_interval_s",
        description="Default pause between polls of a database or directory",
    )


class DeliverSettings(Section):
    """`simpul deliver`: webhook delivery."""

    web_port: int = Field(
        default=6067,
        ge=1,
        le=65535,
        alias="deliver_web_port",
        description="Port of `simpul deliver` (/metrics, /health)",
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        alias="deliver_max_attempts",
        description="Webhook attempts before the dead letter",
    )
    retry_base_s: float = Field(
        default=1.0,
        gt=0,
        alias="deliver_retry_base_s",
        description="First webhook back-off; doubles per attempt (full jitter)",
    )
    retry_max_s: float = Field(
        default=300.0,
        gt=0,
        alias="deliver_retry_max_s",
        description="Longest webhook back-off, also caps Retry-After",
    )
    timeout_s: float = Field(
        default=10.0, gt=0, alias="deliver_timeout_s", description="Webhook request timeout"
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        le=256,
        alias="deliver_concurrency",
        description="Requests in flight per webhook endpoint",
    )
    max_pending: int = Field(
        default=1000,
        ge=1,
        alias="deliver_max_pending",
        description="Undelivered messages per endpoint before its partitions are paused",
    )


class JoinsSettings(Section):
    """`simpul joins`: derived events."""

    wait_s: float = Field(
        default=300.0,
        gt=0,
        alias="join_wait_s",
        description="How long a left event waits for its right side before the join's "
        "on_timeout applies (a join's own wait_s overrides it)",
    )
    check_s: float = Field(
        default=1.0,
        gt=0,
        alias="join_check_s",
        description="How often waiting left events are checked for expiry",
    )
    web_port: int = Field(
        default=6068,
        ge=1,
        le=65535,
        alias="joins_web_port",
        description="Port of `simpul joins` (/metrics, /health)",
    )


class AuditSettings(Section):
    """The delivery audit log and its chain heads."""

    key: Annotated[str, _secret("audit_key")] = Field(
        default="",
        alias="audit_key",
        repr=False,  # a secret: never in a log or a traceback
        description="Secret key of the HMAC that hashes NIK/NIP in the delivery audit log; "
        "empty: generated once into data_dir/audit-key (mode 0600)",
    )
    heads_file: LocalPath = Field(
        default=Path("var/audit-heads.jsonl"),
        alias="audit_heads_file",
        description="Where audit writers export their MAC'd chain heads, outside the database "
        "(keep it on other storage; `simpul audit verify` reads it)",
    )
    export_s: float = Field(
        default=10.0,
        gt=0,
        alias="audit_export_s",
        description="How often an audit writer exports its chain head",
    )


class ConsoleSettings(Section):
    """`simpul console`: the web console."""

    port: int = Field(
        default=8088,
        ge=1,
        le=65535,
        alias="console_port",
        description="Port of `simpul console` (the web console)",
    )
    secret: str = Field(
        default="",
        alias="console_secret",
        repr=False,  # a secret: never in a log or a traceback
        description="Key that signs the console's session cookies; empty: generated once into "
        "data_dir/console-secret (mode 0600)",
    )
    users_file: LocalPath | None = Field(
        default=None,
        alias="console_users_file",
        description="The console's users and password hashes (mode 0600); empty: "
        "data_dir/console-users.json",
    )
    connect_url: str = Field(
        default="",
        alias="console_connect_url",
        description="REST API of `simpul connect` the console steers; empty: "
        "http://127.0.0.1:connect_port",
    )
    health_urls: str = Field(
        default="",
        alias="console_health_urls",
        description="Readiness probes as name=url pairs, comma-separated (e.g. "
        "worker=http://worker:6066/health); empty: worker, joins, deliver and connect on "
        "127.0.0.1 at their ports",
    )
    refresh_s: float = Field(
        default=10.0,
        gt=0,
        alias="console_refresh_s",
        description="How often console pages refresh their live parts",
    )
    session_hours: float = Field(
        default=12.0,
        gt=0,
        alias="console_session_hours",
        description="How long a console login lasts",
    )


# SIMPUL_* variables that are not settings, so the check below lets them be: secrets read by
# name where they are used (`simpul secrets init` writes them; a topology's `secret_env` or
# `auth.token.env` names them) and the switches of the test and benchmark harness.
NOT_SETTINGS_PREFIXES = (
    "SIMPUL_WEBHOOK_SECRET_",
    "SIMPUL_KAFKA_PASSWORD_",
    "SIMPUL_SECRET_",
    "SIMPUL_TEST_",
    "SIMPUL_BENCH_",
    "SIMPUL_FUZZ_",
)
NOT_SETTINGS = frozenset(
    {"SIMPUL_KAFKA_ADMIN_PASSWORD", "SIMPUL_FAIL_ON_SKIP", "SIMPUL_SCREENSHOTS_DIR"}
)
# Any other name ending so is taken for a secret a topology names (SIMPUL_BKN_TOKEN), unless
# it is so like a setting's name that it is more likely that setting misspelt.
SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_PASSWORD", "_KEY")
_MISSPELT = 0.85


class Settings(BaseSettings):
    """Every setting has a default that works on the embedded stack (Tansu + SQLite)."""

    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True)

    kafka: KafkaSettings
    broker: BrokerSettings
    consumer: ConsumerSettings
    store: StoreSettings
    paths: PathSettings
    http: HttpSettings
    process: ProcessSettings
    worker: WorkerSettings
    dlq: DlqSettings
    registry: RegistrySettings
    ingress: IngressSettings
    connect: ConnectSettings
    deliver: DeliverSettings
    joins: JoinsSettings
    audit: AuditSettings
    console: ConsoleSettings

    # public name -> its section; filled in below the class.
    _section_of: ClassVar[dict[str, str]] = {}

    def __init__(self, **values: Any) -> None:
        """Keywords are the public names (`kafka_bootstrap=...`); they beat the environment."""
        super().__init__(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, _FlatEnvironment(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _into_sections(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        sections: dict[str, dict[str, Any]] = {name: {} for name in cls.model_fields}
        unknown = []
        for key, value in data.items():
            section = cls._section_of.get(key)
            if section is None:
                unknown.append(key)
            else:
                sections[section][key] = value
        if unknown:
            raise ValueError("; ".join(_not_a_setting(key) for key in unknown))
        return sections

    @classmethod
    def setting_fields(cls) -> dict[str, FieldInfo]:
        """Every setting by its public name (the variable is `SIMPUL_` + its upper case)."""
        return {
            alias: info
            for section in cls.model_fields.values()
            for alias, info in _section_fields(section.annotation)
        }

    def flat(self) -> dict[str, Any]:
        """Every setting's value by its public name: what the constructor takes."""
        values: dict[str, Any] = {}
        for name in type(self).model_fields:
            values.update(getattr(self, name).model_dump(by_alias=True))
        return values

    def replace(self, **changes: Any) -> Self:
        """A validated copy with some settings changed (public names), the environment unread."""
        return type(self).model_validate({**self.flat(), **changes})

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """`update` takes public names and is validated, as `replace` does."""
        if update:
            return self.replace(**update)
        return super().model_copy(deep=deep)

    def audit_secret(self) -> str:
        """The audit HMAC key: the setting, else this installation's generated one."""
        from simpul.installation import installation_secret

        return (
            self.audit.key
            or installation_secret(self.paths.data_dir / "audit-key", create=True)
            or ""
        )

    @property
    def public_keys_path(self) -> Path:
        """Where the public keys are: the setting, or beside the topology file."""
        if self.paths.public_keys_file is not None:
            return self.paths.public_keys_file
        topology = self.paths.topology_file
        return topology.with_name(topology.stem + ".keys.yaml")

    def client_tuning(self) -> ClientTuning:
        """Consumer timings for the engine, each overridable by its own setting."""
        base = ENGINE_TUNING[self.broker.engine]
        consumer = self.consumer
        return ClientTuning(
            session_timeout_s=consumer.session_timeout_s or base.session_timeout_s,
            rebalance_timeout_s=consumer.rebalance_timeout_s or base.rebalance_timeout_s,
            fetch_max_wait_ms=consumer.fetch_max_wait_ms or base.fetch_max_wait_ms,
            fetch_min_bytes=consumer.fetch_min_bytes,
        )


def _section_fields(section: Any) -> list[tuple[str, FieldInfo]]:
    return [(info.alias or name, info) for name, info in section.model_fields.items()]


Settings._section_of = {
    alias: section
    for section, info in Settings.model_fields.items()
    for alias, _ in _section_fields(info.annotation)
}


def setting_env_names() -> set[str]:
    """Every setting's environment variable."""
    return {ENV_PREFIX + name.upper() for name in Settings._section_of}


def _not_a_setting(key: str) -> str:
    if key.startswith(ENV_PREFIX):  # from the environment
        known: list[str] = sorted(setting_env_names())
        what = f"environment variable {key}"
    else:
        known = sorted(Settings._section_of)
        what = f"{key!r}"
    nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]}?" if nearest else " (docs/settings.md lists them)"
    return f"{what} is not a Simpul setting{hint}"


def is_setting_variable(name: str) -> bool:
    """Whether a SIMPUL_* variable must be a setting (True) or is one of the names kept
    for other uses (False): see NOT_SETTINGS_PREFIXES and SECRET_SUFFIXES."""
    upper = name.upper()
    if upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
        return False
    if upper.endswith(SECRET_SUFFIXES):
        return bool(difflib.get_close_matches(upper, setting_env_names(), n=1, cutoff=_MISSPELT))
    return True


class _FlatEnvironment(PydanticBaseSettingsSource):
    """SIMPUL_* variables by public name (the section is found from the name); a SIMPUL_*
    variable that is no setting is passed on under its own name, to be refused."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole environment

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name, value in os.environ.items():
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX):
                continue
            public = upper.removeprefix(ENV_PREFIX).lower()
            if public in Settings._section_of:
                found[public] = value
            elif is_setting_variable(upper):
                found[upper] = value
        return found


@dataclass(frozen=True, slots=True)
class ClientTuning:
    """How Simpul's consumers talk to one engine (Kafka clients' names, in milliseconds)."""

    session_timeout_s: float
    rebalance_timeout_s: float
    fetch_max_wait_ms: int
    fetch_min_bytes: int = 1

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
            "fetch_min_bytes": self.fetch_min_bytes,
        }


# Tansu: a new group's first message comes after about half the session timeout, so keep it
# short; its fetch is not answered early when records arrive, so wait briefly.
# Apache Kafka: the broker refuses sessions under 6 s (group.min.session.timeout.ms). Its
# fetch wait is short because a client has one fetch in flight per broker: aiokafka fetches
# only partitions with nothing buffered, and a partition drained meanwhile waits until that
# fetch returns. With Kafka's 500 ms, a fetch of the quiet partitions held the busy ones back
# (docs/operations.md has the figures).
ENGINE_TUNING = {
    "embedded": ClientTuning(session_timeout_s=6.0, rebalance_timeout_s=6.0, fetch_max_wait_ms=100),
    "kafka": ClientTuning(session_timeout_s=10.0, rebalance_timeout_s=30.0, fetch_max_wait_ms=20),
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _shown(default: Any) -> str:
    if isinstance(default, Path):
        default = default.as_posix()
    return f"`{default}`" if default not in ("", None) else "(empty)"


def settings_table() -> str:
    """Every setting, by section, as Markdown (docs/settings.md is this output)."""
    lines = [
        "# Settings",
        "",
        "Generated by `python -m simpul.settings` from `simpul/settings.py`; a test keeps it in",
        "step. Every setting is an environment variable; every default works on the embedded",
        "stack. Relative paths are relative to the working directory (the checkout for",
        "`make demo` and `make test`, `/app` in the image).",
        "",
        "Code reads a setting from its section (`settings.kafka.bootstrap`); the constructor",
        "takes the variable's name without `SIMPUL_` (`Settings(kafka_bootstrap=...)`). A",
        "`SIMPUL_*` variable that is no setting stops the process, naming the nearest real one.",
        "Kept for other uses, and so not refused:",
        "",
        "* " + ", ".join(f"`{prefix}*`" for prefix in NOT_SETTINGS_PREFIXES),
        "* " + ", ".join(f"`{name}`" for name in sorted(NOT_SETTINGS)),
        "* a secret a topology names (`secret_env`, `auth.token.env`) ending in "
        + ", ".join(f"`{suffix}`" for suffix in SECRET_SUFFIXES)
        + ", unless it is nearly a setting's name (then it is taken for that one misspelt)",
    ]
    for section_name, section in Settings.model_fields.items():
        model = section.annotation
        doc = (getattr(model, "__doc__", None) or "").strip().splitlines()[0]
        lines += [
            "",
            f"## {section_name}",
            "",
            doc,
            "",
            "| variable | read as | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for name, info in model.model_fields.items():  # type: ignore[union-attr]
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(
                f"| `{ENV_PREFIX}{(info.alias or name).upper()}` | `{section_name}.{name}` "
                f"| {_shown(info.default)} | {meaning} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
