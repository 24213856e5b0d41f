"""Event signatures: an Ed25519 key pair per agency and per Simpul gateway; sign and verify.

Every event on ``simpul.in.*`` carries two CloudEvents extension attributes (Kafka headers):
``ce_keyid``, the id of the key that signed it, and ``ce_signature``, the base64 Ed25519
signature of `event_digest`: SHA-256 over every ``ce_*`` header except the signature itself
(``ce_keyid`` included), ``content-type``, the Kafka key and the value, each length-prefixed.

A producer that sends many events at once may sign them as a batch (`Signer.sign_batch`): one
signature over the root of a Merkle tree of their digests (RFC 9162's tree, its own domain),
and on each event a third header, ``ce_sigproof``, with the event's place in the tree and the
hashes that lead from it to the root. Every event still stands alone as evidence: its digest,
its proof and the one signature check without the rest of the batch. The worker verifies a
batch's signature once (`KeyRing` remembers signatures it has checked), so a batch of 256
costs one Ed25519 check instead of 256 — about 190 µs of CPU each with `cryptography`.

Public keys live in a YAML file beside the topology (committed; `public_keys_path`), private
keys in ``keys_dir`` (mode 0600, never in the repository or the image). A key belongs to one
owner: an agency (it signs its own events) or a gateway process (ingress, connect, joins),
which signs on behalf of the agencies it ``attests``. Rotation gives an old key a
``valid_until``, so both keys are accepted during the overlap; revocation is immediate.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import os
import secrets
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from simpul import yamltext
from simpul.errors import InvalidMessage
from simpul.settings import Settings

SIGNATURE_HEADER = "ce_signature"
KEYID_HEADER = "ce_keyid"
PROOF_HEADER = "ce_sigproof"
_DOMAIN = b"simpul-event-v1"
_BATCH_DOMAIN = b"simpul-batch-v1"
#: The most events one batch signature covers; larger batches are split (a proof then has at
#: most 8 hashes: 256 bytes, 344 in base64).
BATCH_MAX = 256
#: Signatures a `KeyRing` remembers having checked (a batch's, or an event re-sent as it was).
_VERIFIED_MAX = 4096
_NONE = struct.pack(">I", 0xFFFFFFFF)

#: Simpul's processes that emit events, and whom each may attest by default ("*": any agency
#: it authenticated; the ingress and connect runtime check the agency themselves).
GATEWAYS: dict[str, tuple[str, ...]] = {
    "ingress": ("*",),
    "connect": ("*",),
    "joins": ("simpul",),
}

Kind = Literal["agency", "gateway"]
Headers = Sequence[tuple[str, bytes | None]]


class KeyError_(Exception):
    """A key file or key operation is wrong; the message says which and how to fix it."""


def _signed_name(name: str) -> bool:
    unsigned = name in (SIGNATURE_HEADER, PROOF_HEADER)
    return (name.startswith("ce_") and not unsigned) or name == "content-type"


_LENGTH = struct.Struct(">I").pack


def event_digest(signed: dict[str, bytes], key: bytes | None, value: bytes | None) -> bytes:
    """The SHA-256 digest an event's signature covers (``signed``: the signed headers): the
    domain, then each signed header's name and value by name, the key and the value, each
    length-prefixed (a missing key or value is 0xFFFFFFFF)."""
    parts = [_DOMAIN]
    for name in sorted(signed):
        raw = signed[name]
        parts += (_named(name), _LENGTH(len(raw)), raw)
    for data in (key, value):
        parts += (_NONE,) if data is None else (_LENGTH(len(data)), data)
    return hashlib.sha256(b"".join(parts)).digest()


@functools.lru_cache(maxsize=256)
def _named(name: str) -> bytes:
    """A header name's length-prefixed encoding, as `event_digest` hashes it: the same dozen
    names on every event, remembered within a bound because senders choose them."""
    encoded = name.encode()
    return _LENGTH(len(encoded)) + encoded


def _read_headers(headers: Headers) -> tuple[dict[str, bytes], bytes | None, bytes | None]:
    """The headers a signature covers (by name), the signature and the proof, in one pass;
    raises `InvalidMessage` on a repeated one.

    A repeated CloudEvents header is refused because readers that take the first and readers
    that take the last copy would see two different events under one signature.
    """
    out: dict[str, bytes] = {}
    signature = proof = None
    for name, raw in headers:
        if name == SIGNATURE_HEADER:
            if signature is not None:
                raise InvalidMessage("headers", "header.repeated", f"{name}: header repeated")
            signature = raw or b""
        elif name == PROOF_HEADER:
            if proof is not None:
                raise InvalidMessage("headers", "header.repeated", f"{name}: header repeated")
            proof = raw or b""
        elif _signed_name(name):
            if name in out:
                raise InvalidMessage("headers", "header.repeated", f"{name}: header repeated")
            out[name] = raw or b""
    return out, signature, proof


def _leaf_hash(digest: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + digest).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def batch_message(root: bytes, size: int) -> bytes:
    """What a batch signature signs: the tree's root and its size, in Simpul's batch domain
    (so no batch can pass for a single event, or a tree for one of another size)."""
    return hashlib.sha256(_batch_signed(root, size)).digest()


def _batch_signed(root: bytes, size: int) -> bytes:
    return _BATCH_DOMAIN + struct.pack(">I", size) + root


def merkle_tree(digests: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of RFC 9162's Merkle tree over ``digests`` and each leaf's inclusion path
    (bottom up), in one pass."""

    def build(lo: int, hi: int) -> tuple[bytes, list[list[bytes]]]:
        if hi - lo == 1:
            return _leaf_hash(digests[lo]), [[]]
        split = lo + (1 << ((hi - lo - 1).bit_length() - 1))  # largest power of 2 below n
        left, left_paths = build(lo, split)
        right, right_paths = build(split, hi)
        for path in left_paths:
            path.append(right)
        for path in right_paths:
            path.append(left)
        return _node_hash(left, right), left_paths + right_paths

    if not digests:
        raise ValueError("a Merkle tree needs at least one leaf")
    return build(0, len(digests))


def merkle_root(
    digest: bytes, index: int, size: int, path: Sequence[bytes], nodes: InnerNodes | None = None
) -> bytes:
    """The root that ``path`` leads to from leaf ``index`` of a tree of ``size`` leaves
    (RFC 9162, 2.1.3.2); raises ValueError when the path cannot belong to such a tree.

    ``nodes`` remembers the inner nodes already hashed: the events of one batch share the
    upper part of their paths, so a batch of 256 hashes each of its 255 inner nodes once
    instead of 8 times each path. It is a memo of SHA-256 itself, so every hash of every path
    is still checked."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is outside a tree of {size}")
    sha256 = hashlib.sha256  # _node_hash inlined: this runs for every batch-signed event
    known = nodes.hashes if nodes is not None else {}
    fn, sn, node = index, size - 1, _leaf_hash(digest)
    for sibling in path:
        if sn == 0:
            raise ValueError("the path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            pair = b"\x01" + sibling + node
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            pair = b"\x01" + node + sibling
        hashed = known.get(pair)
        if hashed is None:
            hashed = sha256(pair).digest()
            if nodes is not None:
                nodes.add(pair, hashed)
        node = hashed
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("the path is shorter than the tree is deep")
    return node


class InnerNodes:
    """SHA-256 of the inner Merkle nodes hashed recently (`merkle_root`) and of the batch
    messages (`batch_message`), at most ``limit`` of them. A memo of the hash function only:
    what it returns is what hashing would."""

    def __init__(self, limit: int = 4 * BATCH_MAX * 8) -> None:
        self.limit = limit
        self.hashes: dict[bytes, bytes] = {}

    def batch_message(self, root: bytes, size: int) -> bytes:
        """`batch_message`, hashed once per batch."""
        signed = _batch_signed(root, size)
        hashed = self.hashes.get(signed)
        if hashed is None:
            hashed = hashlib.sha256(signed).digest()
            self.add(signed, hashed)
        return hashed

    def add(self, pair: bytes, hashed: bytes) -> None:
        if len(self.hashes) >= self.limit:
            self.hashes = {}  # rebinding: a reader on another thread keeps the old one
        self.hashes[pair] = hashed


def format_proof(index: int, size: int, path: Sequence[bytes]) -> bytes:
    """``ce_sigproof``: ``<index>.<size>.<base64 of the path's hashes>``."""
    return f"{index}.{size}.".encode() + base64.b64encode(b"".join(path))


def parse_proof(raw: bytes) -> tuple[int, int, list[bytes]]:
    """Index, size and path of a ``ce_sigproof`` header; raises ValueError saying why not."""
    parts = raw.split(b".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        raise ValueError("not <index>.<size>.<base64 path>")
    if len(parts[0]) > 6 or len(parts[1]) > 6:
        raise ValueError(f"a batch holds at most {BATCH_MAX} events")
    index, size = int(parts[0]), int(parts[1])
    if not 1 <= size <= BATCH_MAX:
        raise ValueError(f"batch size {size} is not 1 to {BATCH_MAX}")
    hashes = base64.b64decode(parts[2], validate=True)
    if len(hashes) % 32:
        raise ValueError("the path is not whole 32-byte hashes")
    return index, size, [hashes[i : i + 32] for i in range(0, len(hashes), 32)]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """One entry of the public keys file."""

    key_id: str
    owner: str
    kind: Kind
    public_key: bytes  # raw 32 bytes
    created_at: dt.datetime
    valid_until: dt.datetime | None = None
    revoked_at: dt.datetime | None = None
    attests: tuple[str, ...] = ()

    def state(self, now: dt.datetime) -> str:
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.valid_until is not None and self.valid_until <= now:
            return "expired"
        return "valid"

    def may_sign_for(self, agency: str) -> bool:
        if self.kind == "agency":
            return self.owner == agency
        return "*" in self.attests or agency in self.attests

    def as_yaml(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "key_id": self.key_id,
            "owner": self.owner,
            "kind": self.kind,
            "public_key": base64.b64encode(self.public_key).decode(),
            "created_at": _iso(self.created_at),
            "valid_until": _iso(self.valid_until),
            "revoked_at": _iso(self.revoked_at),
        }
        if self.kind == "gateway":
            entry["attests"] = list(self.attests)
        return entry


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds") if value else None


def _parse_time(value: Any, where: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise KeyError_(f"{where}: {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def read_public_keys(path: Path) -> list[PublicKey]:
    """The entries of a public keys file; a missing file holds none."""
    if not path.exists():
        return []
    data = yamltext.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: list[PublicKey] = []
    for i, raw in enumerate(data.get("keys") or []):
        where = f"{path.name}: keys[{i}]"
        try:
            key_id, owner, kind = str(raw["key_id"]), str(raw["owner"]), str(raw["kind"])
            public = base64.b64decode(str(raw["public_key"]), validate=True)
        except (KeyError, TypeError, ValueError) as error:
            raise KeyError_(f"{where}: {error} (need key_id, owner, kind, public_key)") from None
        if kind not in ("agency", "gateway"):
            raise KeyError_(f"{where}.kind: {kind!r} is not agency or gateway")
        if len(public) != 32:
            raise KeyError_(f"{where}.public_key: not a 32-byte Ed25519 public key")
        entries.append(
            PublicKey(
                key_id=key_id,
                owner=owner,
                kind=cast(Kind, kind),  # checked to be one of the two just above
                public_key=public,
                created_at=_parse_time(raw.get("created_at"), f"{where}.created_at")
                or dt.datetime.now(dt.UTC),
                valid_until=_parse_time(raw.get("valid_until"), f"{where}.valid_until"),
                revoked_at=_parse_time(raw.get("revoked_at"), f"{where}.revoked_at"),
                attests=tuple(str(a) for a in raw.get("attests") or ()),
            )
        )
    return entries


def write_public_keys(path: Path, entries: Iterable[PublicKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# Public keys of the agencies and Simpul gateways that sign events (see README,\n"
        "# Security). Managed by `simpul agency keys`; commit this file. Private keys are\n"
        "# never here: they live in SIMPUL_KEYS_DIR.\n"
        + yaml.safe_dump({"keys": [e.as_yaml() for e in entries]}, sort_keys=False)
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def private_key_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"{key_id}.pem"


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class Attestation:
    """Who vouched for one event: the key, its owner, and the gateway if one signed."""

    key_id: str
    signer: str
    gateway: str | None
    signature: str  # base64, as sent
    headers: dict[str, str] = field(default_factory=dict)  # the signed headers, as sent
    proof: str | None = None  # ce_sigproof as sent, when the event was signed in a batch


class Signer:
    """Signs events with one private key: ``signer.sign(headers, key, value)``."""

    def __init__(self, key_id: str, owner: str, private: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self.owner = owner
        self._private = private

    def sign(
        self, headers: Sequence[tuple[str, bytes]], key: bytes | None, value: bytes | None
    ) -> list[tuple[str, bytes]]:
        """The headers without any earlier signature, plus ``ce_keyid`` and ``ce_signature``."""
        out, digest = self._prepare(headers, key, value)
        out.append((SIGNATURE_HEADER, base64.b64encode(self._private.sign(digest))))
        return out

    def sign_batch(
        self, events: Sequence[tuple[Sequence[tuple[str, bytes]], bytes | None, bytes | None]]
    ) -> list[list[tuple[str, bytes]]]:
        """The headers of each of ``events`` (headers, key, value), signed together: one
        signature per `BATCH_MAX` events, each event with its ``ce_sigproof``. A batch of
        one is signed as `sign` signs."""
        signed: list[list[tuple[str, bytes]]] = []
        for start in range(0, len(events), BATCH_MAX):
            chunk = events[start : start + BATCH_MAX]
            if len(chunk) == 1:
                signed.append(self.sign(*chunk[0]))
                continue
            prepared = [self._prepare(headers, key, value) for headers, key, value in chunk]
            root, paths = merkle_tree([digest for _, digest in prepared])
            signature = base64.b64encode(self._private.sign(batch_message(root, len(chunk))))
            for index, ((out, _), path) in enumerate(zip(prepared, paths, strict=True)):
                out.append((PROOF_HEADER, format_proof(index, len(chunk), path)))
                out.append((SIGNATURE_HEADER, signature))
                signed.append(out)
        return signed

    def _prepare(
        self, headers: Sequence[tuple[str, bytes]], key: bytes | None, value: bytes | None
    ) -> tuple[list[tuple[str, bytes]], bytes]:
        unsigned = (KEYID_HEADER, SIGNATURE_HEADER, PROOF_HEADER)
        out = [(n, v) for n, v in headers if n not in unsigned]
        out.append((KEYID_HEADER, self.key_id.encode()))
        return out, event_digest({n: v for n, v in out if _signed_name(n)}, key, value)


def load_signer(public_file: Path, keys_dir: Path, owner: str) -> Signer:
    """The newest valid key of ``owner`` whose private half is in ``keys_dir``."""
    now = dt.datetime.now(dt.UTC)
    entries = read_public_keys(public_file)
    # Newest first: a key being rotated out (valid_until set) after those that are not, and
    # among keys made in the same second the later entry of the file.
    candidates = sorted(
        (
            (e.valid_until is None, e.created_at, i, e)
            for i, e in enumerate(entries)
            if e.owner == owner and e.state(now) == "valid"
        ),
        key=lambda c: c[:3],
        reverse=True,
    )
    for *_, entry in candidates:
        path = private_key_path(keys_dir, entry.key_id)
        if path.exists():
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private, Ed25519PrivateKey):
                raise KeyError_(f"{path}: not an Ed25519 private key")
            return Signer(entry.key_id, owner, private)
    raise KeyError_(
        f"no signing key for {owner!r}: no valid key of it in {public_file} has its private "
        f"key in {keys_dir}; create one with `simpul agency keys create {owner}`"
    )


class KeyRing:
    """The public keys the worker verifies with, loaded once and reloaded when the file
    changes (a stat per batch by default; ``reload_s`` spaces the checks), so a rotation or
    a revocation takes effect at the next batch without a restart."""

    def __init__(self, path: Path, reload_s: float = 0.0) -> None:
        self.path = path
        self.reload_s = reload_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime: float | None = None
        self._entries: dict[str, tuple[PublicKey, Ed25519PublicKey]] = {}
        # (key id, signature, signed message) already checked: a batch's other events and
        # exact re-sends need only their digest (and path) recomputed. Cleared on reload.
        self._verified: set[tuple[str, bytes, bytes]] = set()
        self._nodes = InnerNodes()
        self._load()

    def _load(self) -> None:
        try:
            mtime: float | None = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self._entries:
            return
        self._entries = {
            e.key_id: (e, Ed25519PublicKey.from_public_bytes(e.public_key))
            for e in read_public_keys(self.path)
        }
        self._verified = set()
        self._mtime = mtime

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_s:
            return
        with self._lock:
            self._checked = now
            self._load()

    def key_ids(self) -> list[str]:
        return list(self._entries)

    def get(self, key_id: str) -> PublicKey | None:
        found = self._entries.get(key_id)
        return found[0] if found else None

    def verify(
        self,
        headers: Headers,
        key: bytes | None,
        value: bytes | None,
        now: dt.datetime | None = None,
    ) -> Attestation:
        """Check one event's signature; raises `InvalidMessage` (stage ``authenticate``)
        saying whether it is unsigned, by an unknown, revoked or expired key, by a key that
        may not sign for the claimed ``ce_source``, or does not match the event."""
        signed, signature_b64, proof = _read_headers(headers)
        key_id_raw = signed.get(KEYID_HEADER)
        if not signature_b64 or not key_id_raw:
            raise InvalidMessage(
                "authenticate",
                "signature.missing",
                f"{SIGNATURE_HEADER}/{KEYID_HEADER}: event is not signed",
            )
        key_id = key_id_raw.decode("utf-8", errors="replace")
        found = self._entries.get(key_id)
        if found is None:
            raise InvalidMessage(
                "authenticate", "key.unknown", f"{KEYID_HEADER}: key {key_id!r} is not known"
            )
        entry, public = found
        state = entry.state(now or dt.datetime.now(dt.UTC))
        if state != "valid":
            raise InvalidMessage(
                "authenticate", f"key.{state}", f"{KEYID_HEADER}: key {key_id!r} is {state}"
            )
        source = signed.get("ce_source", b"").decode("utf-8", errors="replace")
        agency = source.removeprefix("/agency/")
        if not source.startswith("/agency/") or not entry.may_sign_for(agency):
            raise InvalidMessage(
                "authenticate",
                "key.wrong_source",
                f"{KEYID_HEADER}: key {key_id!r} of {entry.owner} may not sign for "
                f"ce_source {source!r}",
            )
        message = event_digest(signed, key, value)
        if proof is not None:
            try:
                index, size, path = parse_proof(proof)
                root = merkle_root(message, index, size, path, self._nodes)
                message = self._nodes.batch_message(root, size)
            except ValueError as error:
                raise InvalidMessage(
                    "authenticate", "signature.proof", f"{PROOF_HEADER}: {error}"
                ) from None
        checked = (key_id, signature_b64, message)
        if checked not in self._verified:
            try:
                public.verify(base64.b64decode(signature_b64, validate=True), message)
            except (InvalidSignature, ValueError):
                raise InvalidMessage(
                    "authenticate",
                    "signature.invalid",
                    f"{SIGNATURE_HEADER}: signature does not match the event (key {key_id!r})",
                ) from None
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified = set()
            self._verified.add(checked)
        return Attestation(
            key_id=key_id,
            signer=entry.owner,
            gateway=entry.owner if entry.kind == "gateway" else None,
            signature=signature_b64.decode(),
            headers={n: v.decode("utf-8", errors="replace") for n, v in signed.items()},
            proof=proof.decode() if proof is not None else None,
        )


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
#: Below this many events a batch is verified on the calling thread.
PARALLEL_FROM = 256


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="simpul-verify"
            )
        return _POOL


def verify_many(
    ring: KeyRing, events: Sequence[tuple[Headers, bytes | None, bytes | None]]
) -> list[Attestation | InvalidMessage]:
    """`KeyRing.verify` for a batch, in order: an attestation or the refusal per event.

    Ed25519 verification (about 140–190 µs of CPU each) releases the GIL, so a batch with
    many distinct signatures is split over a thread pool and uses every core. Events signed in
    batches share a signature, checked once; the rest is Python (about 25 µs an event), which
    threads would only slow, so such a batch is verified on the calling thread."""

    def chunk(part: Sequence[tuple[Headers, bytes | None, bytes | None]]) -> list[Any]:
        out: list[Attestation | InvalidMessage] = []
        now = dt.datetime.now(dt.UTC)  # one clock reading for the keys' validity
        for headers, key, value in part:
            try:
                out.append(ring.verify(headers, key, value, now))
            except InvalidMessage as error:
                out.append(error)
        return out

    if len(events) < PARALLEL_FROM:
        return chunk(events)
    distinct = {v for headers, _, _ in events for n, v in headers if n == SIGNATURE_HEADER}
    if len(distinct) < PARALLEL_FROM:
        return chunk(events)
    parts = max(2, os.cpu_count() or 2)
    size = -(-len(events) // parts)
    slices = [events[i : i + size] for i in range(0, len(events), size)]
    results: list[Attestation | InvalidMessage] = []
    for part in _pool().map(chunk, slices):
        results.extend(part)
    return results


def _key_id(owner: str) -> str:
    return f"{owner}-{dt.datetime.now(dt.UTC):%Y%m%d}-{secrets.token_hex(3)}"


def _write_private(keys_dir: Path, key_id: str, private: Ed25519PrivateKey) -> Path:
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    path = private_key_path(keys_dir, key_id)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path


def kind_of(owner: str, agencies: Iterable[str]) -> Kind:
    if owner in GATEWAYS:
        return "gateway"
    if owner in set(agencies):
        return "agency"
    raise KeyError_(
        f"owner: {owner!r} is neither an agency of the topology nor a Simpul gateway "
        f"({', '.join(GATEWAYS)})"
    )


def create_key(
    public_file: Path,
    keys_dir: Path,
    owner: str,
    kind: Kind,
    attests: Sequence[str] | None = None,
) -> PublicKey:
    """Make a key pair: the private half into ``keys_dir`` (0600), the public into the file."""
    entry = _new_key(keys_dir, owner, kind, attests)
    write_public_keys(public_file, [*read_public_keys(public_file), entry])
    return entry


def _new_key(
    keys_dir: Path, owner: str, kind: Kind, attests: Sequence[str] | None = None
) -> PublicKey:
    """A new key pair: the private half written to ``keys_dir``, the public half returned."""
    private = Ed25519PrivateKey.generate()
    entry = PublicKey(
        key_id=_key_id(owner),
        owner=owner,
        kind=kind,
        public_key=private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        created_at=dt.datetime.now(dt.UTC),
        attests=tuple(attests if attests is not None else GATEWAYS.get(owner, ()))
        if kind == "gateway"
        else (),
    )
    _write_private(keys_dir, entry.key_id, private)
    return entry


def rotate_key(
    public_file: Path, keys_dir: Path, owner: str, kind: Kind, overlap: dt.timedelta
) -> tuple[PublicKey, list[PublicKey]]:
    """A new key for ``owner``; its other valid keys stay valid for ``overlap`` more."""
    now = dt.datetime.now(dt.UTC)
    entries = read_public_keys(public_file)
    old = [e for e in entries if e.owner == owner and e.state(now) == "valid"]
    attests = old[-1].attests if old and kind == "gateway" else None
    new = _new_key(keys_dir, owner, kind, attests)
    until = now + overlap
    ended = []
    updated = []
    for e in entries:
        if e in old and (e.valid_until is None or e.valid_until > until):
            e = replace(e, valid_until=until)
            ended.append(e)
        updated.append(e)
    write_public_keys(public_file, [*updated, new])
    return new, ended


def revoke_key(public_file: Path, keys_dir: Path, key_id: str) -> PublicKey:
    """Refuse ``key_id`` from now on and delete its private half if it is here."""
    entries = read_public_keys(public_file)
    if not any(e.key_id == key_id for e in entries):
        raise KeyError_(f"key_id: {key_id!r} is not in {public_file}")
    now = dt.datetime.now(dt.UTC)
    updated = [replace(e, revoked_at=now) if e.key_id == key_id else e for e in entries]
    write_public_keys(public_file, updated)
    private_key_path(keys_dir, key_id).unlink(missing_ok=True)
    return next(e for e in updated if e.key_id == key_id)


def ensure_keys(
    public_file: Path, keys_dir: Path, owners: Iterable[tuple[str, Kind]]
) -> list[PublicKey]:
    """Create a key for every owner without a usable one (the embedded demo, tests). The
    public keys file is read once and written once, however many keys are made."""
    now = dt.datetime.now(dt.UTC)
    entries = read_public_keys(public_file)
    made = []
    for owner, kind in owners:
        usable = any(
            e.owner == owner
            and e.state(now) == "valid"
            and private_key_path(keys_dir, e.key_id).exists()
            for e in entries
        )
        if not usable:
            made.append(_new_key(keys_dir, owner, kind))
            entries.append(made[-1])
    if made:
        write_public_keys(public_file, entries)
    return made


def signer_for(settings: Settings, owner: str) -> Signer:
    """The signer of an agency or gateway under this installation's key settings."""
    return load_signer(settings.public_keys_path, settings.paths.keys_dir, owner)
