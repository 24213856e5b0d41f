"""Event signatures: every way an event can fail to be authentic is refused and named."""

from __future__ import annotations

import datetime as dt
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simpul.cli.main import app
from simpul.envelope import Envelope
from simpul.errors import InvalidMessage
from simpul.signing import (
    SIGNATURE_HEADER,
    KeyRing,
    create_key,
    ensure_keys,
    load_signer,
    private_key_path,
    read_public_keys,
    revoke_key,
    rotate_key,
)

pytestmark = pytest.mark.unit

KEY = b"7271054507910003"
VALUE = b"\x00\x00\x00\x00\x01avro-body"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    public, private = tmp_path / "palu.keys.yaml", tmp_path / "private"
    create_key(public, private, "dinsos", "agency")
    create_key(public, private, "dukcapil", "agency")
    create_key(public, private, "ingress", "gateway")
    create_key(public, private, "joins", "gateway")
    return public, private


def headers(source: str = "dinsos") -> list[tuple[str, bytes]]:
    return Envelope(type="social.recipient.updated", source=f"/agency/{source}").to_headers()


def refusal(ring: KeyRing, hdrs: list[tuple[str, bytes]], value: bytes = VALUE) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        ring.verify(hdrs, KEY, value)
    return caught.value


def test_signed_event_verifies_and_names_its_signer(keys: tuple[Path, Path]) -> None:
    public, private = keys
    signed = load_signer(public, private, "dinsos").sign(headers(), KEY, VALUE)
    attestation = KeyRing(public).verify(signed, KEY, VALUE)
    assert attestation.signer == "dinsos" and attestation.gateway is None
    assert attestation.key_id.startswith("dinsos-")
    assert attestation.headers["ce_source"] == "/agency/dinsos"


def test_each_unauthentic_event_is_refused_with_its_reason(keys: tuple[Path, Path]) -> None:
    public, private = keys
    ring = KeyRing(public)
    dinsos = load_signer(public, private, "dinsos")
    unsigned = refusal(ring, headers())
    assert (unsigned.stage, unsigned.code) == ("authenticate", "signature.missing")

    forged = dinsos.sign(headers(), KEY, VALUE)
    tampered = refusal(ring, forged, value=VALUE + b"x")
    assert tampered.code == "signature.invalid"
    assert "does not match the event" in tampered.reason

    # dinsos's own key, but the event claims to come from dukcapil
    impostor = dinsos.sign(headers("dukcapil"), KEY, VALUE)
    wrong = refusal(ring, impostor)
    assert wrong.code == "key.wrong_source"
    assert "may not sign for ce_source '/agency/dukcapil'" in wrong.reason

    unknown = [(k, b"bkpsdm-20261201-000000" if k == "ce_keyid" else v) for k, v in forged]
    assert refusal(ring, unknown).code == "key.unknown"

    changed_id = [(k, b"another-id" if k == "ce_id" else v) for k, v in forged]
    assert refusal(ring, changed_id).code == "signature.invalid"

    twice = [*forged, ("ce_source", b"/agency/simpul")]
    repeated = refusal(ring, twice)
    assert (repeated.stage, repeated.code) == ("headers", "header.repeated")
    assert refusal(ring, [*forged, (SIGNATURE_HEADER, b"AAAA")]).code == "header.repeated"


def test_simpul_headers_are_not_signed_and_do_not_break_a_signature(
    keys: tuple[Path, Path],
) -> None:
    public, private = keys
    signed = load_signer(public, private, "dinsos").sign(headers(), KEY, VALUE)
    # A header outside the CloudEvents set is not covered (and simpul_* is dropped at ingest).
    KeyRing(public).verify([*signed, ("simpul_subscription", b"x")], KEY, VALUE)


def test_revoked_key_is_refused_at_once_and_its_private_key_deleted(
    keys: tuple[Path, Path],
) -> None:
    public, private = keys
    signer = load_signer(public, private, "dinsos")
    signed = signer.sign(headers(), KEY, VALUE)
    ring = KeyRing(public, reload_s=0)
    ring.verify(signed, KEY, VALUE)
    revoke_key(public, private, signer.key_id)
    ring.refresh()  # the worker rereads the file when it changes: no restart
    assert refusal(ring, signed).code == "key.revoked"
    assert not private_key_path(private, signer.key_id).exists()
    other = load_signer(public, private, "dukcapil").sign(headers("dukcapil"), KEY, VALUE)
    ring.verify(other, KEY, VALUE)  # nobody else is affected


def test_rotation_keeps_both_keys_valid_during_the_overlap(keys: tuple[Path, Path]) -> None:
    public, private = keys
    old = load_signer(public, private, "dinsos")
    before = old.sign(headers(), KEY, VALUE)
    new, ended = rotate_key(public, private, "dinsos", "agency", dt.timedelta(hours=1))
    assert [e.key_id for e in ended] == [old.key_id]
    ring = KeyRing(public)
    assert load_signer(public, private, "dinsos").key_id == new.key_id  # publishers move on
    ring.verify(before, KEY, VALUE)  # events signed with the old key still pass
    ring.verify(load_signer(public, private, "dinsos").sign(headers(), KEY, VALUE), KEY, VALUE)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with pytest.raises(InvalidMessage) as caught:
        ring.verify(before, KEY, VALUE, now=later)
    assert caught.value.code == "key.expired"


def test_gateway_signs_for_the_agencies_it_attests(keys: tuple[Path, Path]) -> None:
    public, private = keys
    ring = KeyRing(public)
    ingress = load_signer(public, private, "ingress")
    attestation = ring.verify(ingress.sign(headers("dukcapil"), KEY, VALUE), KEY, VALUE)
    assert (attestation.signer, attestation.gateway) == ("ingress", "ingress")
    joins = load_signer(public, private, "joins")
    ring.verify(joins.sign(headers("simpul"), KEY, VALUE), KEY, VALUE)
    # the joins key speaks for Simpul's derived events only
    assert refusal(ring, joins.sign(headers("dinsos"), KEY, VALUE)).code == "key.wrong_source"


def test_keys_commands_keep_private_keys_private(tmp_path: Path) -> None:
    public, private = tmp_path / "palu.keys.yaml", tmp_path / "keys"
    env = {"SIMPUL_PUBLIC_KEYS_FILE": str(public), "SIMPUL_KEYS_DIR": str(private)}
    runner = CliRunner()
    from simpul.settings import get_settings

    get_settings.cache_clear()
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        created = runner.invoke(app, ["agency", "keys", "create", "bkpsdm"])
        assert created.exit_code == 0, created.output
        (entry,) = read_public_keys(public)
        pem = private_key_path(private, entry.key_id)
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert "PRIVATE" not in public.read_text() and entry.key_id in public.read_text()
        bad = runner.invoke(app, ["agency", "keys", "create", "bappeda"])
        assert bad.exit_code == 2 and "neither an agency" in bad.output
        rotated = runner.invoke(app, ["agency", "keys", "rotate", "bkpsdm", "--overlap", "2h"])
        assert rotated.exit_code == 0 and "stays valid until" in rotated.output
        listed = runner.invoke(app, ["agency", "keys", "list"])
        assert listed.exit_code == 0 and listed.output.count("valid") >= 2
        revoked = runner.invoke(app, ["agency", "keys", "revoke", entry.key_id])
        assert revoked.exit_code == 0 and not pem.exists()
        everyone = runner.invoke(app, ["agency", "keys", "create", "--all"])
        assert everyone.exit_code == 0
        owners = {e.owner for e in read_public_keys(public)}
        assert {"dinsos", "kel-ujuna", "ingress", "connect", "joins"} <= owners
        assert "simpul" not in owners  # Simpul's derived events are signed by joins
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def test_ensure_keys_gives_each_owner_one_usable_key_and_keeps_the_others(
    keys: tuple[Path, Path],
) -> None:
    public, private = keys
    before = read_public_keys(public)
    revoke_key(public, private, next(e.key_id for e in before if e.owner == "dukcapil"))
    owners = [("dinsos", "agency"), ("dukcapil", "agency"), ("bkpsdm", "agency")]
    made = ensure_keys(public, private, owners)  # type: ignore[arg-type]
    # dinsos already has a usable key; dukcapil's was revoked; bkpsdm had none
    assert sorted(e.owner for e in made) == ["bkpsdm", "dukcapil"]
    after = read_public_keys(public)
    assert [e.key_id for e in after[: len(before)]] == [e.key_id for e in before]
    assert [e.key_id for e in after[len(before) :]] == [e.key_id for e in made]
    for owner in ("dinsos", "dukcapil", "bkpsdm"):
        signer = load_signer(public, private, owner)
        assert KeyRing(public).verify(signer.sign(headers(owner), KEY, VALUE), KEY, VALUE)
    assert ensure_keys(public, private, owners) == []  # type: ignore[arg-type]
    assert read_public_keys(public) == after
