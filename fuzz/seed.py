#!/usr/bin/env python3
"""Writes the starting corpus of every fuzz target into fuzz/corpus/<target>/, from proto/golden.

Each seed is an input the node meets for real, in the form its target takes (see the functions of
`herald::fuzz`): client frames from proto/golden/client.json in both codecs, the same wrapped in
masked WebSocket frames (whole, fragmented, with control frames between), signed JWTs, upgrade
query strings, and Redis pub/sub envelopes. Standard library only.

    python3 fuzz/seed.py
"""
import base64
import hashlib
import hmac
import json
import os
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent
GOLDEN = ROOT.parent / "proto" / "golden"
JWT_SECRET = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"  # herald::fuzz::JWT_SECRET


def msgpack(v) -> bytes:
    """MessagePack of a JSON value (enough of the format for the goldens)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack("b", v)
        return b"\xd3" + struct.pack(">q", v) if v < 0 else b"\xcf" + struct.pack(">Q", v)
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        head = bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xdb" + struct.pack(">I", len(b))
        return head + b
    if isinstance(v, list):
        return b"\xdd" + struct.pack(">I", len(v)) + b"".join(msgpack(x) for x in v)
    if isinstance(v, dict):
        return b"\xdf" + struct.pack(">I", len(v)) + b"".join(
            msgpack(k) + msgpack(x) for k, x in v.items()
        )
    raise TypeError(type(v))


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame."""
    mask = b"\x11\x22\x33\x44"
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def b64url(b: bytes) -> bytes:
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwt(claims: dict, alg: str = "HS256") -> bytes:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(JWT_SECRET, head + b"." + body, digest).digest()
    return head + b"." + body + b"." + b64url(sig)


def write(target: str, seeds: list[bytes]) -> None:
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (d / hashlib.sha1(s).hexdigest()).write_bytes(s)
    print(f"{target}: {len(seeds)} seeds")


def main() -> None:
    cases = json.loads((GOLDEN / "client.json").read_text())
    frames = [c["frame"] for c in cases if "frame" in c]
    raws = [c["raw"].encode() for c in cases if "raw" in c]
    texts = [json.dumps(f, separators=(",", ":")).encode() for f in frames] + raws
    packed = [msgpack(f) for f in frames]

    # client_frame: selector byte (bit 0: MessagePack, bit 1: binary frame), then the payload.
    write("client_frame", [b"\x00" + t for t in texts] + [b"\x03" + p for p in packed])

    # websocket_frames: a cut byte, then frames as a client sends them.
    wire = []
    for i, t in enumerate(texts):
        wire.append(bytes([i % 7]) + ws_frame(0x1, t))
        half = len(t) // 2
        wire.append(
            bytes([3])
            + ws_frame(0x1, t[:half], fin=False)
            + ws_frame(0x9, b"ping")
            + ws_frame(0x0, t[half:])
        )
    for p in packed[:10]:
        wire.append(b"\x05" + ws_frame(0x2, p))
    wire.append(b"\x00" + ws_frame(0x8, struct.pack(">H", 1000) + b"bye"))
    wire.append(b"\x01" + ws_frame(0xA, b""))
    write("websocket_frames", wire)

    # jwt: tokens signed with the target's secret, valid and not.
    grants = {"subscribe": ["news.>", "chat.*"], "publish": ["chat.*"], "send": ["orders"]}
    far = 4_102_444_800  # 2100-01-01
    write(
        "jwt",
        [
            jwt({"sub": "alice", "exp": far, "grants": grants}),
            jwt({"sub": "bob", "exp": far, "nbf": 0, "grants": {}}, "HS384"),
            jwt({"sub": "carol", "exp": far, "grants": {"subscribe": ["a.b.c"]}}, "HS512"),
            jwt({"sub": "dave", "exp": 1, "grants": grants}),
            jwt({"sub": "", "exp": far, "grants": grants}),
            b64url(b'{"alg":"none"}') + b"." + b64url(b'{"sub":"x","exp":1}') + b".",
        ],
    )

    # ticket: upgrade query strings.
    t = b64url(os.urandom(32)).decode()
    write(
        "ticket",
        [
            f"ticket={t}".encode(),
            f"ticket={t}&since=41&epoch=e1".encode(),
            b"since=18446744073709551615&epoch=x&ticket=",
            b"ticket=%41%42&since=1",
            b"",
        ],
    )

    # redis_envelope: channel NUL payload.
    write(
        "redis_envelope",
        [
            b"herald:{news}:msg\x0042 e1 " + texts[0],
            b"herald:{chat.room-1}:msg\x001 Zk9x {\"a\":[1,2,{\"b\":null}]}",
            b"herald:{news}:presence\x00J conn-1 alice",
            b"herald:{news}:presence\x00L conn-1 alice",
            b"herald:{user:alice}:direct\x00- {\"x\":1}",
            b"herald:{user:alice}:direct\x00orders \"hi\"",
        ],
    )


if __name__ == "__main__":
    main()
