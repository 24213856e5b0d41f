"""Batch signatures: one Ed25519 signature over a Merkle root, and every event still its own
evidence. Each way a batch-signed event can be forged or broken is refused and named."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simpul.envelope import Envelope
from simpul.errors import InvalidMessage
from simpul.signing import (
    BATCH_MAX,
    PROOF_HEADER,
    SIGNATURE_HEADER,
    InnerNodes,
    KeyRing,
    Signer,
    batch_message,
    create_key,
    format_proof,
    load_signer,
    merkle_root,
    merkle_tree,
    parse_proof,
    revoke_key,
    verify_many,
)

pytestmark = pytest.mark.unit

VALUE = b"\x00\x00\x00\x00\x01avro-body"


def reference_root(digests: list[bytes]) -> bytes:
    """RFC 9162's MTH, written straight from its definition."""
    if len(digests) == 1:
        return hashlib.sha256(b"\x00" + digests[0]).digest()
    k = 1
    while k * 2 < len(digests):
        k *= 2
    left, right = reference_root(digests[:k]), reference_root(digests[k:])
    return hashlib.sha256(b"\x01" + left + right).digest()


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=BATCH_MAX))
def test_every_leaf_leads_to_the_root_of_rfc_9162s_tree(size: int) -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(size)]
    root, paths = merkle_tree(digests)
    assert root == reference_root(digests)
    for index, path in enumerate(paths):
        assert merkle_root(digests[index], index, size, path) == root
        assert len(path) <= 8  # BATCH_MAX = 256: a path of at most 8 hashes
    if size > 1:  # a leaf under another index, or a path cut short, leads elsewhere or nowhere
        index = size // 2
        with contextlib.suppress(ValueError):
            assert merkle_root(digests[index], (index + 1) % size, size, paths[index]) != root
        with pytest.raises(ValueError):
            merkle_root(digests[index], index, size, paths[index][:-1])


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=BATCH_MAX), st.integers(min_value=1, max_value=64))
def test_remembered_inner_nodes_give_the_roots_that_hashing_gives(size: int, limit: int) -> None:
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(size)]
    root, paths = merkle_tree(digests)
    nodes = InnerNodes(limit)  # a small memo is emptied many times over one tree
    for _ in range(2):
        for index, path in enumerate(paths):
            assert merkle_root(digests[index], index, size, path, nodes) == root
            assert nodes.batch_message(root, size) == batch_message(root, size)
    assert len(nodes.hashes) <= limit


def test_proof_header_round_trips_and_refuses_what_is_not_a_proof() -> None:
    path = [bytes(32), bytes(range(32))]
    assert parse_proof(format_proof(3, 5, path)) == (3, 5, path)
    for bad in (b"", b"3.5", b"x.5.AAAA", b"3.5.not base64!", b"3.999.", b"3.5." + b"A" * 4):
        with pytest.raises(ValueError):
            parse_proof(bad)


@pytest.fixture
def ring_and_signer(tmp_path: Path) -> tuple[KeyRing, Signer, Path, Path]:
    public, private = tmp_path / "palu.keys.yaml", tmp_path / "private"
    create_key(public, private, "dinsos", "agency")
    create_key(public, private, "dukcapil", "agency")
    return KeyRing(public), load_signer(public, private, "dinsos"), public, private


def batch(count: int, source: str = "dinsos") -> list[tuple[list[tuple[str, bytes]], bytes, bytes]]:
    return [
        (
            Envelope(type="social.recipient.updated", source=f"/agency/{source}").to_headers(),
            f"72710545079{i:05d}".encode(),
            VALUE + str(i).encode(),
        )
        for i in range(count)
    ]


def refused(ring: KeyRing, headers: list[tuple[str, bytes]], key: bytes, value: bytes) -> str:
    with pytest.raises(InvalidMessage) as caught:
        ring.verify(headers, key, value)
    assert caught.value.stage in ("authenticate", "headers")
    return caught.value.code


def test_a_batch_is_signed_once_per_256_and_each_event_verifies_alone(
    ring_and_signer: tuple[KeyRing, Signer, Path, Path],
) -> None:
    ring, signer, public, _ = ring_and_signer
    events = batch(600)
    signed = signer.sign_batch(events)
    signatures = [dict(h)[SIGNATURE_HEADER] for h in signed]
    assert len(set(signatures)) == 3  # 256 + 256 + 88
    for headers, (_, key, value) in zip(signed, events, strict=True):
        attestation = KeyRing(public).verify(headers, key, value)  # a fresh ring: no memory
        assert attestation.signer == "dinsos" and attestation.proof is not None
        assert attestation.proof == dict(headers)[PROOF_HEADER].decode()
        assert PROOF_HEADER not in attestation.headers  # the path is not a signed header
    checked = verify_many(ring, [(h, k, v) for h, (_, k, v) in zip(signed, events, strict=True)])
    assert all(not isinstance(c, InvalidMessage) for c in checked)


def test_a_batch_of_one_is_an_ordinary_signature(
    ring_and_signer: tuple[KeyRing, Signer, Path, Path],
) -> None:
    ring, signer, _, _ = ring_and_signer
    ((headers, key, value),) = batch(1)
    (signed,) = signer.sign_batch([(headers, key, value)])
    assert PROOF_HEADER not in dict(signed)
    assert ring.verify(signed, key, value).proof is None


def test_each_broken_batch_event_is_refused_with_its_reason(
    ring_and_signer: tuple[KeyRing, Signer, Path, Path],
) -> None:
    ring, signer, _, _ = ring_and_signer
    events = batch(10)
    signed = signer.sign_batch(events)
    (h0, k0, v0), (h1, k1, v1) = (signed[0], *events[0][1:]), (signed[1], *events[1][1:])
    ring.verify(h0, k0, v0)  # the batch's signature is now remembered as checked

    # a tampered value changes the leaf, so the path leads to another root
    assert refused(ring, h0, k0, v0 + b"x") == "signature.invalid"
    # another event's path, or the right path under another index
    swapped = [(n, dict(h1)[PROOF_HEADER] if n == PROOF_HEADER else v) for n, v in h0]
    assert refused(ring, swapped, k0, v0) == "signature.invalid"
    index, size, path = parse_proof(dict(h0)[PROOF_HEADER])
    moved = [(n, format_proof(index + 1, size, path) if n == PROOF_HEADER else v) for n, v in h0]
    assert refused(ring, moved, k0, v0) == "signature.invalid"
    # a bigger tree claimed for the same path: the size is signed too
    grown = [(n, format_proof(index, size + 6, path) if n == PROOF_HEADER else v) for n, v in h0]
    assert refused(ring, grown, k0, v0) in ("signature.invalid", "signature.proof")
    # the path removed: the batch signature does not sign the event itself
    assert refused(ring, [(n, v) for n, v in h0 if n != PROOF_HEADER], k0, v0) == (
        "signature.invalid"
    )
    # a header that is not a proof names the header and why
    with pytest.raises(InvalidMessage) as caught:
        ring.verify([(n, b"1.2.@@" if n == PROOF_HEADER else v) for n, v in h0], k0, v0)
    assert caught.value.code == "signature.proof"
    assert caught.value.reason.startswith(f"{PROOF_HEADER}: ")
    too_big = [(n, f"0.{BATCH_MAX + 1}.".encode() if n == PROOF_HEADER else v) for n, v in h0]
    assert refused(ring, too_big, k0, v0) == "signature.proof"
    assert refused(ring, [*h0, (PROOF_HEADER, dict(h1)[PROOF_HEADER])], k0, v0) == (
        "header.repeated"
    )
    ring.verify(h1, k1, v1)  # the untouched event still passes


def test_a_forged_hash_anywhere_in_a_path_is_refused_after_its_batch_mates_passed(
    ring_and_signer: tuple[KeyRing, Signer, Path, Path],
) -> None:
    """The ring remembers the inner nodes its batch-mates hashed; each hash of each path is
    still checked, at every level."""
    ring, signer, _, _ = ring_and_signer
    events = batch(BATCH_MAX)
    signed = signer.sign_batch(events)
    for headers, (_, key, value) in zip(signed, events, strict=True):
        ring.verify(headers, key, value)
    for target in (0, 77, BATCH_MAX - 1):
        headers, (_, key, value) = signed[target], events[target]
        index, size, path = parse_proof(dict(headers)[PROOF_HEADER])
        for level in range(len(path)):
            forged = [*path[:level], bytes(32), *path[level + 1 :]]
            proof = format_proof(index, size, forged)
            bad = [(n, proof if n == PROOF_HEADER else v) for n, v in headers]
            assert refused(ring, bad, key, value) == "signature.invalid", (target, level)
        ring.verify(headers, key, value)


def test_a_batch_for_another_agency_and_a_revoked_batch_key_are_refused(
    ring_and_signer: tuple[KeyRing, Signer, Path, Path],
) -> None:
    ring, signer, public, private = ring_and_signer
    impostor = batch(5, source="dukcapil")
    signed = signer.sign_batch(impostor)
    assert refused(ring, signed[2], *impostor[2][1:]) == "key.wrong_source"

    events = batch(5)
    signed = signer.sign_batch(events)
    ring.verify(signed[0], *events[0][1:])  # checked once and remembered
    revoke_key(public, private, signer.key_id)
    ring.refresh()
    # the remembered check does not outlive the key: the rest of the batch is refused
    assert refused(ring, signed[1], *events[1][1:]) == "key.revoked"


@settings(max_examples=300, deadline=None)
@given(
    proof=st.one_of(
        st.binary(max_size=400),
        st.from_regex(rb"\A[0-9]{1,4}\.[0-9]{1,4}\.[A-Za-z0-9+/=]{0,400}\Z"),
    )
)
def test_any_proof_header_is_a_named_refusal_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, proof: bytes
) -> None:
    root = tmp_path_factory.mktemp("keys")
    public, private = root / "k.yaml", root / "p"
    create_key(public, private, "dinsos", "agency")
    ring, signer = KeyRing(public), load_signer(public, private, "dinsos")
    events = batch(3)
    signed, key, value = signer.sign_batch(events)[0], events[0][1], events[0][2]
    forged = [(n, proof if n == PROOF_HEADER else v) for n, v in signed]
    with pytest.raises(InvalidMessage) as caught:
        ring.verify(forged, key, value)
    assert caught.value.code in ("signature.proof", "signature.invalid")
