#!/usr/bin/env python3
"""Recomputes the golden transcript's cryptography with Python's `cryptography`
package, independently of the Rust code, following DESIGN.md's "Binding and key
schedule" and the frame layout in protocol/src/frame.rs.

Usage: python3 check_transcript_v1.py transcript_v1.hex   (needs: pip install cryptography)
"""
import hashlib
import struct
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RAW = dict(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def header(frame):
    length, version, kind, flags, counter = struct.unpack(">IHBBQ", frame[:16])
    assert version == 1 and flags == 0, (version, flags)
    assert length == len(frame) - 16, "length field"
    return kind, counter


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
    check("enclave_x25519_pub", x_priv.public_key().public_bytes(**RAW), t["enclave_x25519_pub"])
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

    open_frame = t["frame_session_open"]
    assert header(open_frame) == (1, 0) and open_frame[16] == 2, "SessionOpen is variant 2"
    client_pub, claimed_hash = open_frame[17:49], open_frame[49:81]
    eph = X25519PrivateKey.from_private_bytes(t["client_ephemeral_secret"])
    check("client_ephemeral_pub", eph.public_key().public_bytes(**RAW), client_pub)
    check("session_open evidence_hash", claimed_hash, evidence_hash)

    shared = eph.exchange(X25519PublicKey.from_public_bytes(t["enclave_x25519_pub"]))
    salt = hashlib.sha256(evidence_hash + client_pub).digest()
    c2s, s2c = hkdf(shared, salt, b"chrysalis/v1/c2s"), hkdf(shared, salt, b"chrysalis/v1/s2c")
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
    assert b"Paris" in open_sealed("sealed_chunk_1", s2c, 1)
    open_sealed("sealed_chunk_0", s2c, 0)
    end = open_sealed("sealed_end", s2c, 2)

    signing_bytes = t["receipt_signing_bytes"]
    prefix = b"chrysalis/v1/receipt\0"
    assert signing_bytes.startswith(prefix)
    receipt = signing_bytes[len(prefix):]
    Ed25519PublicKey.from_public_bytes(t["enclave_ed25519_pub"]).verify(
        t["receipt_signature"], signing_bytes)
    print("ok receipt signature")
    request_hash = hashlib.sha256(b"chrysalis/v1/request" + request[1:]).digest()
    check("receipt request_hash", receipt[65:97], request_hash)
    check("receipt evidence_hash", receipt[1:33], evidence_hash)
    assert receipt + t["receipt_signature"] in end, "sealed_end carries the signed receipt"
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "transcript_v1.hex")
