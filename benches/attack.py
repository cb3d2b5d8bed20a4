#!/usr/bin/env python3
"""Attacks one Herald node, from loopback addresses of its own, until told to stop (SIGINT or
SIGTERM) or --duration passes, then prints what each attack got. Standard library only.

- stalled readers (127.0.0.2): each gets a ticket as its own user, upgrades, subscribes to a busy
  topic and never reads again (SO_RCVBUF 4 KiB). The node must cut each one off.
- a flood from one address (127.0.0.3): waves of --flood connections opened at once, each
  sending an upgrade with a forged ticket, held until answered, then closed.
- pipelining HTTP clients (127.0.0.5): each writes GET /healthz requests without end and never
  reads an answer; when the node cuts one off, another takes its place.
- a publisher (127.0.0.4) keeps the stalled readers' topic busy with large messages.

The node's side of every attacking connection is watched in /proc/net/tcp every 100 ms: when its
send queue last grew (the node's last write progress: the peer reads nothing, so the queue only
grows while the node's writes get through) and when it left ESTABLISHED (the cut). "cut after"
is the time from the last write progress to the cut, as write_timeout_secs counts it.

    benches/attack.py --url http://127.0.0.1:28080 --jwt-secret ... --api-key ...

Loopback only; every loop stops by itself.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import sys
import time

STALLED_FROM, FLOOD_FROM, PUBLISH_FROM, PIPELINE_FROM = (
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
)


def b64url(b: bytes) -> bytes:
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def jwt(secret: bytes, sub: str, subscribe: list[str]) -> str:
    now = int(time.time())
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(
        json.dumps(
            {"sub": sub, "iat": now, "exp": now + 3600, "grants": {"subscribe": subscribe}}
        ).encode()
    )
    sig = hmac.new(secret, head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + b64url(sig)).decode()


def masked(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (
        bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: herald.v1.json\r\n\r\n"
    ).encode()


async def open_from(src: str, port: int, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    s.bind((src, 0))
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return s


async def read_head(s: socket.socket, limit: float) -> bytes:
    """Reads until the end of an HTTP head (or EOF), within `limit` seconds."""
    loop = asyncio.get_running_loop()
    buf = b""
    async with asyncio.timeout(limit):
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(s, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


def status_of(head: bytes) -> str:
    parts = head.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and head.startswith(b"HTTP/") else "closed unanswered"


async def http(src: str, port: int, method: str, path: str, auth: str, body: bytes = b""):
    s = await open_from(src, port)
    try:
        req = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {auth}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(s, req)
        buf = b""
        async with asyncio.timeout(10):
            while chunk := await loop.sock_recv(s, 65536):
                buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        return status_of(head), rest, head
    finally:
        s.close()


class Watch:
    """The node's side of the attackers' connections, from /proc/net/tcp."""

    def __init__(self, port: int):
        self.port = f"{port:04X}"
        self.stalled_at: dict[tuple[str, int], float] = {}  # last growth of the send queue
        self.queued: dict[tuple[str, int], int] = {}
        self.cut_at: dict[tuple[str, int], float] = {}
        self.tracked: set[tuple[str, int]] = set()

    def track(self, src: str, s: socket.socket):
        self.tracked.add((src, s.getsockname()[1]))

    def poll(self):
        now = time.monotonic()
        established = set()
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if not local.endswith(":" + self.port):
                    continue
                rip, rport = remote.split(":")
                ip = socket.inet_ntoa(struct.pack("<I", int(rip, 16)))
                key = (ip, int(rport, 16))
                if key not in self.tracked:
                    continue
                tx = int(fields[4].split(":")[0], 16)
                if state == "01":
                    established.add(key)
                    if tx > self.queued.get(key, 0):
                        self.queued[key] = tx
                        self.stalled_at[key] = now
        for key in self.tracked:
            if key not in established and key not in self.cut_at:
                self.cut_at[key] = now

    def summary(self, src: str) -> dict:
        keys = [k for k in self.tracked if k[0] == src]
        stalled = [k for k in keys if k in self.stalled_at]
        cut = [k for k in stalled if k in self.cut_at]
        waits = sorted(self.cut_at[k] - self.stalled_at[k] for k in cut)
        return {
            "connections": len(keys),
            "stalled": len(stalled),
            "cut": len(cut),
            "never_stalled_but_cut": len([k for k in keys if k in self.cut_at and k not in stalled]),
            "cut_after_last_progress_s_max": round(waits[-1], 2) if waits else None,
            "cut_after_last_progress_s_median": round(waits[len(waits) // 2], 2) if waits else None,
        }


async def stalled_readers(a, port: int, secret: bytes, watch: Watch, held: list, out: dict):
    """Upgrades, subscribes to the busy topic, and never reads again."""
    for i in range(a.stalled):
        token = jwt(secret, f"attacker-{i}", ["attack.>"])
        for _ in range(50):  # bounded retries on 429 (ticket rate per address)
            status, body, head = await http(STALLED_FROM, port, "POST", "/v1/tickets", token)
            if status != "429":
                break
            await asyncio.sleep(0.2)
        if status not in ("200", "201"):
            out.setdefault("ticket_failures", {}).setdefault(status, 0)
            out["ticket_failures"][status] += 1
            continue
        ticket = json.loads(body)["ticket"]
        loop = asyncio.get_running_loop()
        for _ in range(50):  # bounded retries on 429 (new connections per second per address)
            s = await open_from(STALLED_FROM, port, rcvbuf=4096)
            await loop.sock_sendall(s, upgrade(port, f"/ws?ticket={ticket}"))
            head = await read_head(s, 10)
            if status_of(head) != "429":
                break
            s.close()
            await asyncio.sleep(0.2)
        if status_of(head) != "101":
            out.setdefault("upgrade_failures", {}).setdefault(status_of(head), 0)
            out["upgrade_failures"][status_of(head)] += 1
            s.close()
            continue
        sub = json.dumps({"op": "sub", "id": 1, "topic": "attack.0"}).encode()
        await loop.sock_sendall(s, masked(sub))
        watch.track(STALLED_FROM, s)
        held.append(s)  # never read again
    out["subscribed"] = len(held)


async def publisher(a, port: int, stop: asyncio.Event, out: dict):
    """Large messages on the stalled readers' topic, --big-rate a second, over one kept-alive
    connection (opened again if the node closes it). Enough to fill a stalled reader's socket
    buffers (the node's send buffer grows to tcp_wmem's maximum, 4 MiB here) and its outbox."""
    body = json.dumps({"topic": "attack.0", "data": {"p": "x" * a.big_size}}).encode()
    req = (
        f"POST /v1/publish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer "
        f"{a.api_key}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    s = None
    while not stop.is_set():
        try:
            if s is None:
                s = await open_from(PUBLISH_FROM, port)
            await loop.sock_sendall(s, req)
            head = await read_head(s, 10)
            status = status_of(head)
            # The answer's body is small: read it to its end (Content-Length).
            length = int(
                next(
                    (h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")),
                    b"0",
                )
            )
            rest = head.partition(b"\r\n\r\n")[2]
            while len(rest) < length:
                rest += await loop.sock_recv(s, 4096)
        except (OSError, TimeoutError, ValueError):
            status = "error"
            if s is not None:
                s.close()
            s = None
        out[status] = out.get(status, 0) + 1
        try:
            await asyncio.wait_for(stop.wait(), 1 / a.big_rate)
        except TimeoutError:
            pass
    if s is not None:
        s.close()


async def flood(a, port: int, stop: asyncio.Event, out: dict):
    """Waves of --flood connections from one address, each an upgrade with a forged ticket."""
    forged = b64url(os.urandom(32)).decode()

    async def one():
        try:
            s = await open_from(FLOOD_FROM, port)
        except OSError as e:
            return f"connect:{e.errno}"
        try:
            await asyncio.get_running_loop().sock_sendall(s, upgrade(port, f"/ws?ticket={forged}"))
            return status_of(await read_head(s, 5))
        except (OSError, TimeoutError) as e:
            return type(e).__name__
        finally:
            s.close()

    waves = 0
    while a.flood > 0 and not stop.is_set() and waves < a.max_waves:
        for r in await asyncio.gather(*(one() for _ in range(a.flood))):
            out[r] = out.get(r, 0) + 1
        waves += 1
    out["waves"] = waves


async def pipeliners(a, port: int, watch: Watch, stop: asyncio.Event, out: dict):
    """HTTP clients that pipeline requests and never read an answer, one after another."""
    req = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode() * 2000
    loop = asyncio.get_running_loop()

    async def one():
        s = await open_from(PIPELINE_FROM, port, rcvbuf=4096)
        watch.track(PIPELINE_FROM, s)
        try:
            while not stop.is_set():
                await asyncio.wait_for(loop.sock_sendall(s, req), 1)
        except TimeoutError:
            pass  # our own send buffer is full: the node stopped reading; wait to be cut
        except OSError:
            return
        while not stop.is_set():
            watch.poll()
            if (PIPELINE_FROM, s.getsockname()[1]) in watch.cut_at:
                break
            await asyncio.sleep(0.1)
        s.close()

    n = 0
    while a.pipeliners > 0 and not stop.is_set() and n < a.max_pipeliners:
        await asyncio.gather(*(one() for _ in range(a.pipeliners)))
        n += a.pipeliners
    out["connections"] = n


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:28080")
    p.add_argument("--jwt-secret", default=os.environ.get("HERALD_JWT_SECRET", ""))
    p.add_argument("--api-key", default=os.environ.get("HERALD_API_KEY", ""))
    p.add_argument("--stalled", type=int, default=200)
    p.add_argument("--flood", type=int, default=5000, help="connections per wave")
    p.add_argument("--max-waves", type=int, default=1000)
    p.add_argument("--pipeliners", type=int, default=4, help="at once")
    p.add_argument("--max-pipeliners", type=int, default=400)
    p.add_argument("--big-size", type=int, default=60000)
    p.add_argument("--big-rate", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=120.0, help="hard stop, seconds")
    p.add_argument(
        "--min-duration",
        type=float,
        default=30.0,
        help="a stop asked for earlier waits until this many seconds after ready",
    )
    p.add_argument("--ready-file", help="written once every stalled reader has subscribed")
    a = p.parse_args()
    port = int(a.url.rsplit(":", 1)[1].strip("/"))
    if not a.url.startswith("http://127.0.0.1:"):
        sys.exit("attack.py drives a node on 127.0.0.1 only")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(a.duration, stop.set)
    watch = Watch(port)
    report = {"stalled": {}, "flood": {}, "pipeline": {}, "publish": {}}
    held: list[socket.socket] = []

    async def watcher():
        while not stop.is_set():
            watch.poll()
            await asyncio.sleep(0.1)

    w = asyncio.create_task(watcher())
    pub = asyncio.create_task(publisher(a, port, stop, report["publish"]))
    await stalled_readers(a, port, a.jwt_secret.encode(), watch, held, report["stalled"])
    started = time.monotonic()
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write("ready\n")
    print(f"attack: {len(held)} stalled readers subscribed; flooding", flush=True)
    others = [
        asyncio.create_task(flood(a, port, stop, report["flood"])),
        asyncio.create_task(pipeliners(a, port, watch, stop, report["pipeline"])),
    ]
    await stop.wait()
    if (left := a.min_duration - (time.monotonic() - started)) > 0:
        stop.clear()
        loop.call_later(left, stop.set)
        await stop.wait()
    await asyncio.gather(pub, *others)
    w.cancel()
    watch.poll()
    report["attack_seconds"] = round(time.monotonic() - started, 1)
    report["stalled"].update(watch.summary(STALLED_FROM))
    report["pipeline"].update(watch.summary(PIPELINE_FROM))
    for s in held:
        s.close()
    print("attack report: " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
