"""The one place Kafka client options are made: bootstrap servers and the broker identity
(SASL user, TLS) of this process, for kafka-python and aiokafka alike."""

from __future__ import annotations

import ssl
from typing import Any

from simpul.settings import Settings


def security_options(settings: Settings, *, for_aiokafka: bool = False) -> dict[str, Any]:
    """SASL/TLS keyword arguments; empty on PLAINTEXT."""
    protocol = settings.kafka.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {
        "security_protocol": protocol,
        "sasl_mechanism": settings.kafka.sasl_mechanism,
        "sasl_plain_username": settings.kafka.username,
        "sasl_plain_password": settings.kafka.password,
    }
    if protocol == "SASL_SSL":
        cafile = str(settings.kafka.ssl_cafile) if settings.kafka.ssl_cafile else None
        if for_aiokafka:
            options["ssl_context"] = ssl.create_default_context(cafile=cafile)
        else:
            options["ssl_cafile"] = cafile
            options["ssl_check_hostname"] = True
    return options


def kafka_python_options(target: Settings | str) -> dict[str, Any]:
    """For kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient; a bare bootstrap
    string means an unsecured broker (tests, the embedded demo)."""
    if isinstance(target, str):
        return {"bootstrap_servers": target.split(",")}
    return {
        "bootstrap_servers": target.kafka.bootstrap.split(","),
        **security_options(target),
    }


def aiokafka_options(settings: Settings) -> dict[str, Any]:
    """For aiokafka's AIOKafkaProducer and AIOKafkaConsumer."""
    return {
        "bootstrap_servers": settings.kafka.bootstrap.split(","),
        **security_options(settings, for_aiokafka=True),
    }
