#!/usr/bin/env python3
"""Recomputes the v2 golden transcript's cryptography with Python's `cryptography`
package (50 or later: it has ML-KEM-768), independently of the Rust code, following
docs/protocol.md.

Usage: python3 check_transcript_v2.py transcript_v2.hex   (needs: pip install cryptography)
"""
import hashlib
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)
VERSION = 2


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def header(frame):
    length, version, kind, flags, counter = struct.unpack(">IHBBQ", frame[:16])
    assert version == VERSION and flags == 0, (version, flags)
    assert length == len(frame) - 16, "length field"
    return kind, counter


def x25519_pub(private):
    return private.public_key().public_bytes(**RAW)


def check(name, got, want):
    if got != want:
        sys.exit(f"MISMATCH {name}: {got.hex()} != {want.hex()}")
    print(f"ok {name}")


def main(path):
    t = {}
    for line in open(path):
        name, value = line.split()
        t[name] = bytes.fromhex(value)

    seed = t["enclave_seed"]
    x_priv = X25519PrivateKey.from_private_bytes(hkdf(seed, None, b"chrysalis/v1/enclave-x25519"))
    check("enclave_x25519_pub", x25519_pub(x_priv), t["enclave_x25519_pub"])
    ed_priv = Ed25519PrivateKey.from_private_bytes(hkdf(seed, None, b"chrysalis/v1/enclave-ed25519"))
    check("enclave_ed25519_pub", ed_priv.public_key().public_bytes(**RAW), t["enclave_ed25519_pub"])

    report_data = hashlib.sha512(
        b"chrysalis/v1/report-data" + t["enclave_x25519_pub"] + t["enclave_ed25519_pub"]
        + t["model_root"] + t["nonce"]).digest()
    check("report_data", report_data, t["report_data"])

    evidence_frame = t["frame_evidence_response"]
    assert header(evidence_frame) == (1, 0)
    assert evidence_frame[16] == 1, "EvidenceResponse is variant 1"
    evidence_hash = hashlib.sha256(b"chrysalis/v1/evidence" + evidence_frame[17:]).digest()
    check("evidence_hash", evidence_hash, t["evidence_hash"])

    # Client: X25519 secret, then ML-KEM-768 seed d ‖ z, from its RNG.
    rng = t["client_rng_bytes"]
    eph = X25519PrivateKey.from_private_bytes(rng[:32])
    dk = MLKEM768PrivateKey.from_seed_bytes(rng[32:96])
    check("client_ephemeral_pub", x25519_pub(eph), t["client_ephemeral_pub"])
    check("client_mlkem_pub", dk.public_key().public_bytes_raw(), t["client_mlkem_pub"])

    open_frame = t["frame_session_open"]
    assert header(open_frame) == (1, 0) and open_frame[16] == 2, "SessionOpen is variant 2"
    open_body = open_frame[17:]
    assert len(open_body) == 32 + 1184 + 32
    check("session_open client_ephemeral_pub", open_body[:32], t["client_ephemeral_pub"])
    check("session_open client_mlkem_pub", open_body[32:1216], t["client_mlkem_pub"])
    check("session_open evidence_hash", open_body[1216:], evidence_hash)

    accept_frame = t["frame_session_accept"]
    assert header(accept_frame) == (1, 0) and accept_frame[16] == 3, "SessionAccept is variant 3"
    accept = accept_frame[17:]
    assert len(accept) == 16 + 32 + 1088 + 64
    session_id, enclave_eph, ciphertext, signature = (
        accept[:16], accept[16:48], accept[48:1136], accept[1136:])
    check("accept session_id", session_id, t["session_id"])
    check("accept mlkem_ciphertext", ciphertext, t["mlkem_ciphertext"])
    check("accept signature", signature, t["accept_signature"])
    enclave_eph_priv = X25519PrivateKey.from_private_bytes(t["enclave_rng_bytes"][:32])
    check("enclave_ephemeral_pub", x25519_pub(enclave_eph_priv), enclave_eph)

    transcript_hash = hashlib.sha256(
        b"chrysalis/v2/transcript" + evidence_hash + open_body + session_id + enclave_eph
        + ciphertext).digest()
    check("transcript_hash", transcript_hash, t["transcript_hash"])
    signing_bytes = b"chrysalis/v2/session-accept\0" + transcript_hash
    check("accept_signing_bytes", signing_bytes, t["accept_signing_bytes"])
    Ed25519PublicKey.from_public_bytes(t["enclave_ed25519_pub"]).verify(signature, signing_bytes)
    print("ok accept signature verifies")

    static_dh = eph.exchange(X25519PublicKey.from_public_bytes(t["enclave_x25519_pub"]))
    check("static_dh", static_dh, t["static_dh"])
    check("static_dh (enclave side)",
          x_priv.exchange(X25519PublicKey.from_public_bytes(t["client_ephemeral_pub"])), static_dh)
    ephemeral_dh = eph.exchange(X25519PublicKey.from_public_bytes(enclave_eph))
    check("ephemeral_dh", ephemeral_dh, t["ephemeral_dh"])
    check("ephemeral_dh (enclave side)",
          enclave_eph_priv.exchange(X25519PublicKey.from_public_bytes(t["client_ephemeral_pub"])),
          ephemeral_dh)
    kem_secret = dk.decapsulate(ciphertext)
    check("mlkem_shared_secret", kem_secret, t["mlkem_shared_secret"])

    ikm = static_dh + ephemeral_dh + kem_secret
    c2s = hkdf(ikm, transcript_hash, b"chrysalis/v2/c2s")
    s2c = hkdf(ikm, transcript_hash, b"chrysalis/v2/s2c")
    check("key_c2s", c2s, t["key_c2s"])
    check("key_s2c", s2c, t["key_s2c"])

    def open_sealed(name, key, expected_counter):
        frame = t[name]
        kind, counter = header(frame)
        assert (kind, counter) == (2, expected_counter), (name, kind, counter)
        nonce = b"\0\0\0\0" + struct.pack(">Q", counter)
        plaintext = AESGCM(key).decrypt(nonce, frame[16:], frame[:16])
        print(f"ok {name} opens")
        return plaintext

    request = open_sealed("sealed_request", c2s, 0)
    assert request[0] == 0 and b"What is the capital of France?" in request
    open_sealed("sealed_chunk_0", s2c, 0)
    assert b"Paris" in open_sealed("sealed_chunk_1", s2c, 1)
    end = open_sealed("sealed_end", s2c, 2)

    signing_bytes = t["receipt_signing_bytes"]
    prefix = b"chrysalis/v2/receipt\0"
    assert signing_bytes.startswith(prefix)
    receipt = signing_bytes[len(prefix):]
    Ed25519PublicKey.from_public_bytes(t["enclave_ed25519_pub"]).verify(
        t["receipt_signature"], signing_bytes)
    print("ok receipt signature")
    request_hash = hashlib.sha256(b"chrysalis/v1/request" + request[1:]).digest()
    check("receipt request_hash", receipt[65:97], request_hash)
    check("receipt evidence_hash", receipt[1:33], evidence_hash)
    # The output hash is the receipt's last 32 bytes: SHA-256 over the delivered ids
    # (count u64 LE, ids u32 LE) and the finish reason byte (0 = stop).
    ids = [504, 3575, 282, 4649, 314, 7042, 30]
    output = hashlib.sha256(b"chrysalis/v2/output\0" + struct.pack("<Q", len(ids))
                            + b"".join(struct.pack("<I", i) for i in ids) + b"\0").digest()
    check("output_hash", t["output_hash"], output)
    check("receipt output_hash", receipt[-32:], output)
    assert receipt + t["receipt_signature"] in end, "sealed_end carries the signed receipt"
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "transcript_v2.hex")
