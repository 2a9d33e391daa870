#!/usr/bin/env python3
"""A second, independent Chrysalis client, written from docs/protocol.md alone.

It fetches evidence through the shim with a fresh nonce, checks the REPORT_DATA
binding, opens a protocol v2 sealed session (X25519 + ML-KEM-768, HKDF-SHA256,
AES-256-GCM), sends one chat request, streams the answer and checks the signed
receipt. Dependencies: the Python standard library and `cryptography` (>= 50, for
ML-KEM-768). Nothing here is translated from the Rust code.

Only simulated evidence (an enclave in dev mode) can be checked here, and only with
--allow-simulated; every such run prints INSECURE. SEV-SNP evidence (AMD's certificate
chain, TCB and measurement policy) is refused: use the Rust client for it.

Usage:
  python3 chrysalis_client.py --url http://127.0.0.1:8443 --allow-simulated \\
      "What is the capital of France?"

Exit status 0 when the answer arrived and the receipt verified; otherwise 1 with the
reason on stderr.
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import socket
import struct
import sys
import urllib.parse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# --- docs/protocol.md, "Constants" -------------------------------------------------
PROTOCOL_VERSION = 2
HEADER_LEN = 16
MAX_FRAME_LEN = 1 << 20
KIND_PLAIN, KIND_SEALED = 0x01, 0x02
TAG_LEN = 16

# PlainMessage discriminants.
P_EVIDENCE_REQUEST, P_EVIDENCE_RESPONSE, P_SESSION_OPEN, P_SESSION_ACCEPT = 0, 1, 2, 3
P_CHARGE, P_ERROR = 4, 5
# SealedMessage discriminants.
S_REQUEST, S_CHUNK, S_END, S_ERROR, S_BILL = 0, 1, 2, 3, 4
ERROR_CODES = ["BadRequest", "UnsupportedVersion", "HandshakeFailed", "Overloaded",
               "PaymentRequired", "Internal"]
FINISH_REASONS = ["Stop", "Length", "Cancelled"]
ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT = 0, 1, 2

REPORT_DATA_LABEL = b"chrysalis/v1/report-data"
EVIDENCE_HASH_LABEL = b"chrysalis/v1/evidence"
REQUEST_HASH_LABEL = b"chrysalis/v1/request"
RECEIPT_DOMAIN = b"chrysalis/v2/receipt"
OUTPUT_HASH_DOMAIN = b"chrysalis/v2/output"
TRANSCRIPT_LABEL = b"chrysalis/v2/transcript"
ACCEPT_SIGNATURE_DOMAIN = b"chrysalis/v2/session-accept"
C2S_INFO, S2C_INFO = b"chrysalis/v2/c2s", b"chrysalis/v2/s2c"

MLKEM_EK_LEN, MLKEM_CT_LEN = 1184, 1088
# Bounds on evidence fields.
MAX_REPORT_LEN, MAX_CERTS, MAX_CERT_LEN, MAX_MANIFEST_ID_LEN = 4096, 4, 16384, 128
# The SNP report layout (AMD SEV-SNP ABI, ATTESTATION_REPORT).
SNP_REPORT_LEN, SNP_SIGNED_LEN = 0x4A0, 0x2A0
SNP_REPORT_DATA, SNP_MEASUREMENT, SNP_SIG_R, SNP_SIG_S = 0x50, 0x90, 0x2A0, 0x2E8


class ProtocolFailure(Exception):
    """Anything that ends the session; the message says what was expected."""


# --- postcard -----------------------------------------------------------------------
class Reader:
    """Reads postcard values from untrusted bytes; every read is bounds-checked."""

    def __init__(self, data, what):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolFailure(
                f"truncated {self.what}: needed {n} bytes at offset {self.pos}, "
                f"found {len(self.data) - self.pos}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def varint(self, bits):
        # Unsigned LEB128, at most ceil(bits / 7) bytes; the value must fit in `bits`.
        out, shift = 0, 0
        for _ in range((bits + 6) // 7):
            byte = self.take(1)[0]
            out |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if out >> bits:
                    raise ProtocolFailure(f"{self.what}: varint exceeds {bits} bits")
                return out
        raise ProtocolFailure(f"{self.what}: varint longer than {(bits + 6) // 7} bytes")

    def u32(self):
        return self.varint(32)

    def u64(self):
        return self.varint(64)

    def byte_vec(self, max_len, field):
        n = self.varint(64)
        if n > max_len:
            raise ProtocolFailure(f"{field} has {n} bytes, expected at most {max_len}")
        return self.take(n)

    def string(self, max_len, field):
        raw = self.byte_vec(max_len, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolFailure(f"{field} is not UTF-8: {e}") from None

    def boolean(self):
        b = self.take(1)[0]
        if b > 1:
            raise ProtocolFailure(f"{self.what}: bool byte {b}, expected 0 or 1")
        return b == 1

    def end(self):
        if self.pos != len(self.data):
            raise ProtocolFailure(
                f"{len(self.data) - self.pos} trailing bytes after {self.what}, expected none")


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pc_bytes(b):
    return varint(len(b)) + b


def pc_str(s):
    return pc_bytes(s.encode("utf-8"))


# --- frames -------------------------------------------------------------------------
def frame(kind, counter, body):
    if HEADER_LEN + len(body) > MAX_FRAME_LEN:
        raise ProtocolFailure(f"frame of {HEADER_LEN + len(body)} bytes exceeds {MAX_FRAME_LEN}")
    return struct.pack(">IHBBQ", len(body), PROTOCOL_VERSION, kind, 0, counter) + body


def parse_frame(data):
    """Returns (kind, counter, header, body) of exactly one frame of this version."""
    if len(data) < HEADER_LEN:
        raise ProtocolFailure(f"truncated frame header: needed 16 bytes, found {len(data)}")
    length, version, kind, flags, counter = struct.unpack(">IHBBQ", data[:HEADER_LEN])
    if version != PROTOCOL_VERSION:
        detail = ""
        if kind == KIND_PLAIN and flags == 0 and len(data) == HEADER_LEN + length \
                and length > 0 and data[HEADER_LEN] == P_ERROR:
            try:
                _, message = parse_error(Reader(data[HEADER_LEN + 1:], "error message"))
                detail = f" (the enclave said: {message})"
            except ProtocolFailure:
                pass
        raise ProtocolFailure(
            f"enclave speaks protocol v{version}, this client speaks v{PROTOCOL_VERSION}{detail}")
    if kind not in (KIND_PLAIN, KIND_SEALED):
        raise ProtocolFailure(f"unknown frame kind {kind:#04x}, expected 0x01 or 0x02")
    if flags != 0:
        raise ProtocolFailure(f"header flags {flags:#x}, expected 0")
    if kind == KIND_PLAIN and counter != 0:
        raise ProtocolFailure(f"plain frame with counter {counter}, expected 0")
    if length != len(data) - HEADER_LEN:
        raise ProtocolFailure(
            f"frame announces {length} body bytes, carries {len(data) - HEADER_LEN}")
    return kind, counter, data[:HEADER_LEN], data[HEADER_LEN:]


def parse_error(r):
    code = r.u32()
    message = r.string(1024, "error message")
    r.end()
    name = ERROR_CODES[code] if code < len(ERROR_CODES) else f"code {code}"
    return name, message


def plain_body(data, expected):
    """Decodes a plain frame; an Error message is raised as a failure."""
    kind, _, _, body = parse_frame(data)
    if kind != KIND_PLAIN:
        raise ProtocolFailure(f"unexpected sealed frame, expected a plain {expected}")
    r = Reader(body, "plain message")
    tag = r.u32()
    if tag == P_ERROR:
        code, message = parse_error(r)
        raise ProtocolFailure(f"enclave refused ({code}): {message}")
    return tag, r


# --- evidence -----------------------------------------------------------------------
def parse_evidence(r):
    ev = {}
    ev["kind"] = r.u32()
    ev["report"] = r.byte_vec(MAX_REPORT_LEN, "evidence report")
    n = r.varint(64)
    if n > MAX_CERTS:
        raise ProtocolFailure(f"evidence certificate chain has {n} entries, expected at most 4")
    ev["cert_chain"] = [r.byte_vec(MAX_CERT_LEN, "evidence certificate") for _ in range(n)]
    ev["x25519_pub"] = r.take(32)
    ev["ed25519_pub"] = r.take(32)
    ev["model_root"] = r.take(32)
    ev["manifest_id"] = r.string(MAX_MANIFEST_ID_LEN, "evidence manifest id")
    r.end()
    return ev


def encode_evidence(ev):
    return (varint(ev["kind"]) + pc_bytes(ev["report"]) + varint(len(ev["cert_chain"]))
            + b"".join(pc_bytes(c) for c in ev["cert_chain"]) + ev["x25519_pub"]
            + ev["ed25519_pub"] + ev["model_root"] + pc_str(ev["manifest_id"]))


def verify_evidence(ev, nonce, allow_simulated):
    """Checks REPORT_DATA and the report signature; returns a list of checks that ran."""
    expected = hashlib.sha512(REPORT_DATA_LABEL + ev["x25519_pub"] + ev["ed25519_pub"]
                              + ev["model_root"] + nonce).digest()
    if ev["kind"] == 0:
        raise ProtocolFailure(
            "SEV-SNP evidence: this interop client does not verify AMD's certificate chain; "
            "use the Rust client (chrysalis verify)")
    if ev["kind"] != 1:
        raise ProtocolFailure(f"unknown evidence kind {ev['kind']}, expected 0 or 1")
    if not allow_simulated:
        raise ProtocolFailure(
            "the enclave presented SIMULATED evidence (dev mode); pass --allow-simulated "
            "to proceed INSECURELY")
    report = ev["report"]
    if len(report) != SNP_REPORT_LEN:
        raise ProtocolFailure(f"simulated report of {len(report)} bytes, expected 1184")
    found = report[SNP_REPORT_DATA:SNP_REPORT_DATA + 64]
    if found != expected:
        raise ProtocolFailure(
            f"report data mismatch: found {found.hex()}, expected {expected.hex()}")
    if len(ev["cert_chain"]) != 1:
        raise ProtocolFailure(
            f"expected the throwaway key as the only certificate, found {len(ev['cert_chain'])}")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), ev["cert_chain"][0])
    r = int.from_bytes(report[SNP_SIG_R:SNP_SIG_R + 72], "little")
    s = int.from_bytes(report[SNP_SIG_S:SNP_SIG_S + 72], "little")
    try:
        key.verify(encode_dss_signature(r, s), report[:SNP_SIGNED_LEN], ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ProtocolFailure("simulated report signature does not verify") from None
    return ["report data binds the enclave keys, the model root and our nonce",
            "simulated report signature (throwaway key: proves nothing)"]


# --- transport: HTTP for evidence, a minimal RFC 6455 WebSocket for the session ------
def post_evidence(url, body):
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=60)
    conn.request("POST", "/v1/evidence", body=body,
                 headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    data = resp.read(256 * 1024 + 1)
    conn.close()
    if resp.status != 200:
        raise ProtocolFailure(f"/v1/evidence: HTTP {resp.status}: {data.decode(errors='replace')}")
    return data


class WebSocket:
    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        host, port = u.hostname, u.port or 80
        self.sock = socket.create_connection((host, port), timeout=300)
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET /v1/session HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
            if len(self.buf) > 16384:
                raise ProtocolFailure("WebSocket handshake answer too long")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ProtocolFailure(f"/v1/session: expected 101 Switching Protocols, got {lines[0]}")
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
        headers = {k.strip().lower(): v.strip() for k, v in
                   (l.split(":", 1) for l in lines[1:] if ":" in l)}
        if headers.get("sec-websocket-accept") != accept:
            raise ProtocolFailure("/v1/session: bad Sec-WebSocket-Accept")

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ProtocolFailure("the shim closed the connection")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, data):
        self._send_frame(0x2, data)

    def recv(self):
        """The next binary message (one protocol frame)."""
        message, first_opcode = b"", None
        while True:
            b0, b1 = self._take(2)
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._take(8))[0]
            if n > MAX_FRAME_LEN or len(message) + n > MAX_FRAME_LEN:
                raise ProtocolFailure(f"WebSocket message over {MAX_FRAME_LEN} bytes")
            mask = self._take(4) if masked else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode(errors="replace")
                raise ProtocolFailure(f"the shim closed the session ({code}): {reason}")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                first_opcode = opcode
            elif opcode != 0x0 or first_opcode is None:
                raise ProtocolFailure(f"unexpected WebSocket opcode {opcode}")
            message += payload
            if fin:
                if first_opcode != 0x2:
                    raise ProtocolFailure("text WebSocket message; frames are binary")
                return message

    def close(self):
        try:
            self._send_frame(0x8, struct.pack(">H", 1000))
            self.sock.close()
        except OSError:
            pass


# --- the sealed channel (docs/protocol.md, "Key schedule" and "Sealed frames") -------
class Channel:
    def __init__(self, c2s, s2c):
        self.sealer, self.opener = AESGCM(c2s), AESGCM(s2c)
        self.send_counter = self.recv_counter = 0

    @staticmethod
    def nonce(counter):
        return b"\0\0\0\0" + struct.pack(">Q", counter)

    def seal(self, plaintext):
        header = struct.pack(">IHBBQ", len(plaintext) + TAG_LEN, PROTOCOL_VERSION, KIND_SEALED,
                             0, self.send_counter)
        body = self.sealer.encrypt(self.nonce(self.send_counter), plaintext, header)
        self.send_counter += 1
        return header + body

    def open(self, kind, counter, header, body):
        if kind != KIND_SEALED:
            raise ProtocolFailure("unexpected plain frame, expected a sealed frame")
        if counter != self.recv_counter:
            raise ProtocolFailure(
                f"sealed frame counter {counter}, expected {self.recv_counter}")
        if len(body) < TAG_LEN:
            raise ProtocolFailure(f"sealed body of {len(body)} bytes, shorter than the tag")
        try:
            plaintext = self.opener.decrypt(self.nonce(counter), body, header)
        except Exception:
            raise ProtocolFailure("sealed frame failed authentication; session closed") from None
        self.recv_counter += 1
        return plaintext


def hkdf(ikm, salt, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def x25519_checked(private, public_bytes):
    shared = private.exchange(X25519PublicKey.from_public_bytes(public_bytes))
    if shared == bytes(32):
        raise ProtocolFailure("key exchange with a low-order public key")
    return shared


def handshake(ws, evidence, evidence_hash):
    """Sends the session-open, checks the accept, returns the channel."""
    x_priv = X25519PrivateKey.generate()
    kem_priv = MLKEM768PrivateKey.generate()
    x_pub = x_priv.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw)
    ek = kem_priv.public_key().public_bytes_raw()
    assert len(ek) == MLKEM_EK_LEN
    open_body = x_pub + ek + evidence_hash
    ws.send(frame(KIND_PLAIN, 0, varint(P_SESSION_OPEN) + open_body))

    tag, r = plain_body(ws.recv(), "session accept")
    if tag != P_SESSION_ACCEPT:
        raise ProtocolFailure(f"plain message {tag}, expected a session accept (3)")
    session_id, enclave_eph = r.take(16), r.take(32)
    ciphertext, signature = r.take(MLKEM_CT_LEN), r.take(64)
    r.end()
    transcript_hash = hashlib.sha256(TRANSCRIPT_LABEL + evidence_hash + open_body + session_id
                                     + enclave_eph + ciphertext).digest()
    try:
        Ed25519PublicKey.from_public_bytes(evidence["ed25519_pub"]).verify(
            signature, ACCEPT_SIGNATURE_DOMAIN + b"\0" + transcript_hash)
    except InvalidSignature:
        raise ProtocolFailure(
            "session accept signature does not verify under the evidence's Ed25519 key "
            f"{evidence['ed25519_pub'].hex()}; session closed") from None
    static_dh = x25519_checked(x_priv, evidence["x25519_pub"])
    ephemeral_dh = x25519_checked(x_priv, enclave_eph)
    kem_secret = kem_priv.decapsulate(ciphertext)
    ikm = static_dh + ephemeral_dh + kem_secret
    channel = Channel(hkdf(ikm, transcript_hash, C2S_INFO), hkdf(ikm, transcript_hash, S2C_INFO))
    # Python cannot wipe immutable bytes; dropping the references is all it can do.
    del x_priv, kem_priv, static_dh, ephemeral_dh, kem_secret, ikm
    return channel, session_id


def encode_request(request_id, question, max_tokens):
    messages = [(ROLE_USER, question)]
    prompt = varint(0) + varint(len(messages)) + b"".join(
        varint(role) + pc_str(text) for role, text in messages)
    sampling = struct.pack("<ff", 0.0, 1.0) + varint(0) + varint(0)  # greedy, seed 0
    return varint(request_id) + prompt + varint(max_tokens) + sampling + b"\x01"


def chat(url, question, max_tokens, allow_simulated, out):
    nonce = os.urandom(32)
    answer = post_evidence(url, frame(KIND_PLAIN, 0, varint(P_EVIDENCE_REQUEST) + nonce))
    tag, r = plain_body(answer, "evidence response")
    if tag != P_EVIDENCE_RESPONSE:
        raise ProtocolFailure(f"plain message {tag}, expected an evidence response (1)")
    evidence_bytes = r.data[r.pos:]
    evidence = parse_evidence(r)
    if encode_evidence(evidence) != evidence_bytes:
        raise ProtocolFailure("evidence is not in canonical postcard encoding")
    checks = verify_evidence(evidence, nonce, allow_simulated)
    print("INSECURE: simulated evidence (dev mode): nothing about the code or the machine "
          "is attested", file=out, flush=True)
    for check in checks:
        print(f"checked: {check}", file=out, flush=True)
    evidence_hash = hashlib.sha256(EVIDENCE_HASH_LABEL + evidence_bytes).digest()

    ws = WebSocket(url)
    try:
        channel, session_id = handshake(ws, evidence, evidence_hash)
        print(f"session {session_id.hex()} open (protocol v{PROTOCOL_VERSION}, "
              "X25519 + ML-KEM-768)", file=out, flush=True)
        request_id = int.from_bytes(os.urandom(4), "big")
        request = encode_request(request_id, question, max_tokens)
        ws.send(channel.seal(varint(S_REQUEST) + request))
        text, token_ids, index = "", [], 0
        while True:
            plaintext = channel.open(*parse_frame(ws.recv()))
            r = Reader(plaintext, "sealed message")
            tag = r.u32()
            if tag == S_CHUNK:
                got = r.u32()
                if got != index:
                    raise ProtocolFailure(f"chunk index {got}, expected {index}")
                index += 1
                piece = r.string(MAX_FRAME_LEN, "chunk text")
                n = r.varint(64)
                if n > 4096:
                    raise ProtocolFailure(f"chunk token ids has {n} entries, expected at most 4096")
                token_ids += [r.u32() for _ in range(n)]
                r.end()
                text += piece
                print(piece, end="", file=out, flush=True)
            elif tag == S_END:
                finish = r.u32()
                receipt_start = r.pos
                receipt = {"request_id": r.u64(), "evidence_hash": r.take(32),
                           "model_root": r.take(32), "request_hash": r.take(32),
                           "prompt_tokens": r.u32(), "completion_tokens": r.u32(),
                           "output_hash": r.take(32)}
                receipt_bytes = plaintext[receipt_start:r.pos]
                signature = r.take(64)
                r.end()
                break
            elif tag == S_ERROR:
                code, message = parse_error(r)
                raise ProtocolFailure(f"enclave refused the request ({code}): {message}")
            else:
                raise ProtocolFailure(f"sealed message {tag}, expected a chunk or the end")
    finally:
        ws.close()
    print(file=out)

    try:
        Ed25519PublicKey.from_public_bytes(evidence["ed25519_pub"]).verify(
            signature, RECEIPT_DOMAIN + b"\0" + receipt_bytes)
    except InvalidSignature:
        raise ProtocolFailure("receipt signature does not verify") from None
    expected = {
        "request_id": request_id,
        "evidence_hash": evidence_hash,
        "model_root": evidence["model_root"],
        "request_hash": hashlib.sha256(REQUEST_HASH_LABEL + request).digest(),
        "completion_tokens": len(token_ids),
        "output_hash": output_hash(token_ids, finish),
    }
    for field, want in expected.items():
        if receipt[field] != want:
            raise ProtocolFailure(f"receipt {field} is {receipt[field]!r}, expected {want!r}")
    reason = FINISH_REASONS[finish] if finish < len(FINISH_REASONS) else f"reason {finish}"
    return {"insecure": True, "answer": text, "token_ids": token_ids, "finish_reason": reason,
            "usage": {"prompt_tokens": receipt["prompt_tokens"],
                      "completion_tokens": receipt["completion_tokens"]},
            "receipt_verified": True, "model_root": evidence["model_root"].hex()}


def output_hash(token_ids, finish):
    """What the receipt's output_hash must be for the ids and finish reason received."""
    body = struct.pack("<Q", len(token_ids)) + b"".join(struct.pack("<I", i) for i in token_ids)
    return hashlib.sha256(OUTPUT_HASH_DOMAIN + b"\0" + body + bytes([finish])).digest()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the shim, http://HOST:PORT")
    p.add_argument("--allow-simulated", action="store_true",
                   help="accept simulated (dev-mode) evidence: INSECURE")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print a JSON summary last")
    p.add_argument("question")
    args = p.parse_args()
    try:
        result = chat(args.url, args.question, args.max_tokens, args.allow_simulated, sys.stdout)
    except (ProtocolFailure, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"receipt verified: {result['usage']['completion_tokens']} completion tokens, "
          f"finish {result['finish_reason']} (INSECURE)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
