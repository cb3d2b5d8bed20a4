#!/usr/bin/env python3
"""Herald chaos run: a bounded fault-injection check of the cluster's delivery guarantee.

Started by benches/chaos.sh (which also installs the `websockets` package when it is missing);
run `benches/chaos.sh --help` for the options. Loopback only; every loop is bounded; every
process it starts is stopped when it ends (and, should it be killed itself, dies with it).

What it does:
  1. starts a redis-server with an append-only file (appendfsync always, so that what Redis
     answered is what survives a SIGKILL) in a temporary directory, with an ACL user `herald`
     that the nodes log in as, and 3 `herald serve` nodes sharing it, each on a free port;
  2. subscribes N WebSocket clients (spread over the nodes, each to a few topics); whenever a
     connection ends or fails for any reason, a client reconnects to the next node with a new
     ticket and resubscribes with `since` = the last (epoch, offset) it saw;
  3. publishes with `FCALL herald_publish` straight to Redis at a steady rate the whole time,
     recording the [offset, epoch] of every call Redis answered;
  4. injects faults for real, one after another: the nodes' pub/sub connections killed, Redis
     paused (CLIENT PAUSE) and stopped (SIGSTOP), Redis killed and restarted on its AOF, Redis
     full (maxclients) and the nodes' user switched off (ACL) while their connections are cut,
     a node killed (SIGKILL) and restarted, another drained (SIGTERM) and restarted;
  5. stops publishing, lets the clients catch up (bounded), and checks every client's offsets,
     topic by topic, against what Redis accepted from the client's first subscription on.
Exit status: 0 clean, 1 a client missed (outside an announced `recovered: false` or epoch
change), repeated, reordered or got a wrong payload for an offset, 2 the run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter

try:
    import websockets
    from websockets.asyncio.client import connect as ws_connect
except ImportError:  # pragma: no cover - said plainly, once
    sys.exit(
        "chaos.py needs the Python package `websockets` (>= 13): run it through "
        "benches/chaos.sh, which installs it, or `python3 -m pip install 'websockets>=13'`"
    )

JWT_SECRET = "chaos-secret-chaos-secret-chaos-secret-0123"
API_KEY = "chaos-api-key-0123456789abcdef"
REDIS_USER, REDIS_PASSWORD = "herald", "chaos-pw"
PREFIX = "herald:"
T0 = time.monotonic()


def now() -> float:
    """Seconds since the run started."""
    return time.monotonic() - T0


def log(msg: str) -> None:
    print(f"[{now():7.2f}] {msg}", file=sys.stderr, flush=True)


class RunError(Exception):
    """The run itself could not be made (exit 2)."""


# --------------------------------------------------------------------------------------------
# Processes


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when chaos.py dies, however that happens."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output goes to a log file (appended to across restarts)."""

    def __init__(self, name: str, argv: list[str], env: dict | None, logpath: str):
        self.name, self.argv, self.env, self.logpath = name, argv, env, logpath
        self.p: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        # Popen from the main thread only: PR_SET_PDEATHSIG follows the thread that forked.
        out = open(self.logpath, "ab")
        out.write(f"==== start {self.starts + 1} at {now():.2f}s ====\n".encode())
        out.flush()
        self.p = subprocess.Popen(
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )
        out.close()
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.p is not None
        return self.p.pid

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.p.pid, sig)

    async def wait(self, bound: float) -> int | None:
        """Waits (polling) up to `bound` seconds for the process to exit; its status or None."""
        end = time.monotonic() + bound
        while self.p is not None and time.monotonic() < end:
            rc = self.p.poll()
            if rc is not None:
                return rc
            await asyncio.sleep(0.05)
        return None if self.p is None else self.p.poll()

    def kill_now(self) -> None:
        if self.alive():
            try:
                os.kill(self.p.pid, signal.SIGCONT)
                os.kill(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.p is not None:
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------------------------
# A minimal RESP2 client (enough for FCALL, CONFIG, CLIENT, ACL, HGET, INFO)


class RespError(Exception):
    pass


class Resp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer

    @classmethod
    async def open(cls, port: int, timeout: float = 1.0, auth: tuple | None = None) -> "Resp":
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        c = cls(r, w)
        if auth:
            await c.cmd("AUTH", *auth, timeout=timeout)
        return c

    def close(self) -> None:
        try:
            self.w.close()
        except Exception:
            pass

    async def cmd(self, *args, timeout: float = 2.0):
        """Sends one command and reads its reply; an error reply raises RespError. A timeout or
        I/O error leaves the connection unusable: the caller closes it."""
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.w.write(b"".join(parts))
        v = await asyncio.wait_for(self._read(), timeout)
        if isinstance(v, RespError):
            raise v
        return v

    async def _read(self):
        line = await self.r.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            return (await self.r.readexactly(n + 2))[:-2]
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [await self._read() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP reply {line!r}")


IO_ERRORS = (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError,
             asyncio.LimitOverrunError)


# --------------------------------------------------------------------------------------------
# HTTP (tickets, readiness) and JWT


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_for(user: str) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 3600,
              "grants": {"subscribe": [">"]}}
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(JWT_SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


async def http(port: int, method: str, path: str, headers: dict | None = None,
               timeout: float = 3.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on its own connection (Connection: close); (status, body)."""

    async def go():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            h = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            w.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{h}"
                    f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            data = await r.read()
        finally:
            w.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        if any(l.lower().startswith(b"transfer-encoding:") and b"chunked" in l.lower()
               for l in lines[1:]):
            out, rest = b"", body
            while rest:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size.split(b";")[0] or b"0", 16)
                if n == 0:
                    break
                out, rest = out + rest[:n], rest[n + 2:]
            body = out
        return status, body

    return await asyncio.wait_for(go(), timeout)


class TicketError(Exception):
    pass


async def get_ticket(port: int, jwt: str) -> str:
    status, body = await http(port, "POST", "/v1/tickets", {"Authorization": f"Bearer {jwt}"})
    if status != 200:
        try:
            code = json.loads(body).get("error", "?")
        except ValueError:
            code = "?"
        raise TicketError(f"ticket {status} {code}")
    return json.loads(body)["ticket"]


async def ready(port: int) -> int:
    try:
        return (await http(port, "GET", "/readyz", timeout=1.0))[0]
    except IO_ERRORS:
        return 0
    except (ValueError, IndexError):
        return 0


# --------------------------------------------------------------------------------------------
# The backend: FCALL herald_publish at a steady rate, recording what Redis accepted


class Backend:
    def __init__(self, port_of, topics: list[str], rate: float):
        self.port_of, self.topics, self.rate = port_of, topics, rate
        self.seq = {t: 0 for t in topics}
        # topic -> epoch -> {offset: (seq, accepted at)}
        self.accepted: dict[str, dict[str, dict[int, tuple[int, float]]]] = {t: {} for t in topics}
        self.epochs: dict[str, list[str]] = {t: [] for t in topics}  # in order of appearance
        self.calls = 0           # FCALLs written
        self.ok = 0              # answered [offset, epoch]
        self.refused = Counter()  # error replies (not executed) and connections refused
        self.unknown = []        # (topic, seq, t): written, no answer (the connection broke)
        self.reused = []         # (topic, epoch, offset): an offset Redis answered twice

    async def run(self, stop: asyncio.Event) -> None:
        conn: Resp | None = None
        period, due, i = 1.0 / self.rate, time.monotonic(), 0
        while not stop.is_set():
            due += period
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                due = time.monotonic()  # after a stall: go on at the rate, no burst
            if stop.is_set():
                break
            topic = self.topics[i % len(self.topics)]
            i += 1
            if conn is None:
                try:
                    conn = await Resp.open(self.port_of(), timeout=1.0)
                except IO_ERRORS as e:
                    self.refused[f"connect: {type(e).__name__}"] += 1
                    await asyncio.sleep(0.1)
                    due = time.monotonic()
                    continue
            self.seq[topic] += 1
            seq = self.seq[topic]
            payload = json.dumps({"t": topic, "s": seq}, separators=(",", ":"))
            self.calls += 1
            try:
                r = await conn.cmd("FCALL", "herald_publish", 1, topic, payload, timeout=3.0)
            except RespError as e:
                msg = str(e)
                self.refused[msg.split(" ")[0] if "max number" not in msg else "maxclients"] += 1
                if "max number" in msg or "NOAUTH" in msg:
                    conn.close()
                    conn = None
                continue
            except IO_ERRORS:
                self.unknown.append((topic, seq, now()))
                conn.close()
                conn = None
                continue
            offset, epoch = int(r[0]), r[1].decode()
            per = self.accepted[topic].setdefault(epoch, {})
            if epoch not in self.epochs[topic]:
                self.epochs[topic].append(epoch)
            if offset in per:
                self.reused.append((topic, epoch, offset))
            per[offset] = (seq, now())
            self.ok += 1
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------------------------
# Clients


class TopicState:
    def __init__(self):
        self.start: tuple[str, int] | None = None  # (epoch, offset) of the first `ok`
        self.epoch: str | None = None
        self.last = 0
        self.seqs: dict[str, array] = {}   # epoch -> seq+1 per offset (0: not received)
        self.conn_of: dict[str, array] = {}  # epoch -> the client's connection number per offset
        self.covered: list[tuple[str, int, float]] = []  # (epoch, lo, hi): announced loss
        self.rf: list[dict] = []           # every `recovered: false`
        self.epoch_changes: list[dict] = []
        self.dups: list[dict] = []
        self.ooo: list[dict] = []
        self.jumps: list[dict] = []        # a forward jump at arrival (a gap, unless announced)
        self.before_start = 0
        self.ok_before_held = 0

    def slot(self, epoch: str, off: int) -> tuple[array, array]:
        seqs = self.seqs.get(epoch)
        if seqs is None:
            seqs = self.seqs[epoch] = array("l")
            self.conn_of[epoch] = array("l")
        if off >= len(seqs):
            grow = off + 1 - len(seqs) + 1024
            seqs.extend([0] * grow)
            self.conn_of[epoch].extend([0] * grow)
        return seqs, self.conn_of[epoch]


class Client:
    def __init__(self, idx: int, topics: list[str], ports: list[int], names: list[str]):
        self.idx, self.name = idx, f"c{idx:02d}"
        self.topics, self.ports, self.names = topics, ports, names
        self.jwt = jwt_for(f"chaos-{idx}")
        self.state = {t: TopicState() for t in topics}
        self.conns: list[dict] = []    # every connection that got a welcome
        self.failures = Counter()      # attempts that got no connection, by reason
        self.closes = Counter()        # connections' ends, by close code or reason
        self.sub_errors = Counter()
        self.anomalies = Counter()
        self.next_id = 0
        self.ws = None
        self.subscribed_once = asyncio.Event()

    # -- bookkeeping of what arrives

    def on_ok(self, topic: str, f: dict, since: dict | None, conn_no: int) -> None:
        st = self.state[topic]
        epoch, off = f["epoch"], int(f["offset"])
        if since is None:
            st.start, st.epoch, st.last = (epoch, off), epoch, off
            return
        rec = f.get("recovered")
        if rec is False:
            st.rf.append({"t": now(), "conn": conn_no, "since": (since["epoch"], since["offset"]),
                          "ok": (epoch, off)})
            self._announce(st, since["epoch"], since["offset"], epoch, off)
            st.epoch, st.last = epoch, off
        elif rec is True:
            if epoch != st.epoch:
                self.anomalies["recovered:true in another epoch"] += 1
        else:
            self.anomalies["ok of a sub with since lacks recovered"] += 1

    def _announce(self, st: TopicState, old_epoch: str, old_off: int, epoch: str, off: int):
        """Offsets lost with notice: after old_off in old_epoch, up to off in epoch."""
        if old_epoch == epoch:
            if off > old_off:
                st.covered.append((epoch, old_off + 1, off))
        else:
            st.covered.append((old_epoch, old_off + 1, float("inf")))
            if off >= 1:
                st.covered.append((epoch, 1, off))

    def on_msg(self, topic: str, f: dict, conn_no: int) -> None:
        st = self.state[topic]
        epoch, off = f["epoch"], int(f["offset"])
        data = f.get("data")
        seq = data.get("s") if isinstance(data, dict) else None
        if not isinstance(seq, int) or data.get("t") != topic:
            self.anomalies["msg with a payload not from this run"] += 1
            return
        if epoch != st.epoch:
            st.epoch_changes.append({"t": now(), "conn": conn_no, "from": (st.epoch, st.last),
                                     "to": (epoch, off)})
            self._announce(st, st.epoch, st.last, epoch, off - 1)
            st.epoch, st.last = epoch, off - 1
        if st.start is not None and epoch == st.start[0] and off <= st.start[1]:
            st.before_start += 1
            return
        seqs, conns = st.slot(epoch, off)
        if seqs[off]:
            if len(st.dups) < 1000:
                st.dups.append({"t": now(), "epoch": epoch, "offset": off, "first_conn": conns[off],
                                "conn": conn_no, "same_payload": seqs[off] == seq + 1})
            else:
                st.dups.append(None)
            return
        seqs[off], conns[off] = seq + 1, conn_no
        if off <= st.last:
            st.ooo.append({"t": now(), "conn": conn_no, "epoch": epoch, "offset": off,
                           "after": st.last})
        elif off > st.last + 1:
            st.jumps.append({"t": now(), "conn": conn_no, "epoch": epoch, "last": st.last,
                             "offset": off})
        st.last = max(st.last, off)

    # -- the connection loop

    async def run(self, stop: asyncio.Event) -> None:
        k, backoff = self.idx % len(self.ports), 0.25
        while not stop.is_set():
            how = await self.session(self.ports[k], stop)
            if stop.is_set():
                break
            k = (k + 1) % len(self.ports)  # any other live node, as a load balancer would
            if how == "subscribed":
                backoff = 0.25
                delay = random.uniform(0.0, 0.1)
            elif how == "1012":
                delay = random.uniform(0.0, 0.1)  # restarting: reconnect at once
            else:
                delay = random.uniform(0.5, 1.0) * backoff
                backoff = min(backoff * 2, 2.0)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def session(self, port: int, stop: asyncio.Event) -> str:
        """One connection, from ticket to close; how it ended."""
        try:
            ticket = await get_ticket(port, self.jwt)
        except TicketError as e:
            self.failures[str(e)] += 1
            return "refused"
        except IO_ERRORS as e:
            self.failures[f"ticket: {type(e).__name__}"] += 1
            return "refused"
        try:
            ws = await ws_connect(
                f"ws://127.0.0.1:{port}/ws?ticket={ticket}", subprotocols=["herald.v1.json"],
                compression=None, proxy=None, open_timeout=5, ping_interval=5, ping_timeout=10,
                close_timeout=2, max_size=2**22, user_agent_header=None)
        except websockets.exceptions.InvalidStatus as e:
            self.failures[f"upgrade {e.response.status_code}"] += 1
            return "refused"
        except (websockets.exceptions.InvalidHandshake, *IO_ERRORS) as e:
            self.failures[f"upgrade: {type(e).__name__}"] += 1
            return "refused"
        if stop.is_set():
            await ws.close()
            return "stopped"
        self.ws = ws
        conn_no = len(self.conns) + 1
        rec = {"n": conn_no, "port": port, "node": "?", "conn": "?", "open": now(),
               "subscribed": None, "close": None, "end": None}
        self.conns.append(rec)
        how = "closed"
        try:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if welcome.get("op") != "welcome":
                self.anomalies["first frame not welcome"] += 1
            rec["node"], rec["conn"] = welcome.get("node", "?"), welcome.get("conn", "?")
            pending: dict[int, tuple[str, dict | None]] = {}
            held: dict[str, list] = {}
            for t in self.topics:
                st = self.state[t]
                self.next_id += 1
                f = {"op": "sub", "id": self.next_id, "topic": t}
                if st.start is not None:
                    f["since"] = {"offset": st.last, "epoch": st.epoch}
                pending[self.next_id] = (t, f.get("since"))
                held[t] = []
                await ws.send(json.dumps(f))
            async for raw in ws:
                f = json.loads(raw)
                op = f.get("op")
                if op == "msg":
                    t = f.get("topic")
                    if t in held:
                        held[t].append(f)
                    elif t in self.state:
                        self.on_msg(t, f, conn_no)
                    else:
                        self.anomalies["msg of a topic not subscribed"] += 1
                elif op == "ok" and f.get("id") in pending:
                    t, since = pending.pop(f["id"])
                    self.on_ok(t, f, since, conn_no)
                    for m in held.pop(t):
                        if since is not None:
                            self.anomalies["msg before the ok of a sub with since"] += 1
                        self.on_msg(t, m, conn_no)
                    if not pending:
                        rec["subscribed"] = now()
                        how = "subscribed"
                        self.subscribed_once.set()
                elif op == "error":
                    code = f.get("code", "?")
                    if f.get("id") in pending:
                        self.sub_errors[code] += 1
                        how = "sub-error"
                        break
                    self.anomalies[f"error {code}"] += 1
                else:
                    self.anomalies[f"unexpected {op}"] += 1
        except websockets.exceptions.ConnectionClosed:
            pass
        except (asyncio.TimeoutError, ValueError, KeyError, TypeError) as e:
            self.anomalies[f"session: {type(e).__name__}"] += 1
        except IO_ERRORS as e:
            self.anomalies[f"session: {type(e).__name__}"] += 1
        finally:
            if ws.close_code is None:
                try:
                    await asyncio.wait_for(ws.close(), 3)
                except Exception:
                    pass
            self.ws = None
            rec["end"] = now()
            code = ws.close_code
            rec["close"] = code
            if not stop.is_set():
                key = how if how == "sub-error" else str(code)
                self.closes[key] += 1
                if code == 1012:
                    how = "1012"
        return how

    async def close(self) -> None:
        ws = self.ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 3)
            except Exception:
                pass

    def node_at(self, t: float) -> str:
        for c in self.conns:
            if c["open"] <= t and (c["end"] is None or t <= c["end"]):
                return f"conn {c['n']} ({c['node']})"
        return "no connection"


# --------------------------------------------------------------------------------------------
# The cluster and the faults


class Cluster:
    def __init__(self, herald: str, workdir: str, history: int | None):
        self.dir = workdir
        self.rport = free_port()
        self.redis = Proc("redis", [
            "redis-server", "--port", str(self.rport), "--bind", "127.0.0.1",
            "--protected-mode", "yes", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", workdir,
            "--user", REDIS_USER, "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all",
        ], None, os.path.join(workdir, "redis.log"))
        self.ports = [free_port() for _ in range(3)]
        self.names = [f"node{i}" for i in range(3)]
        self.nodes = []
        for i, port in enumerate(self.ports):
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "RUST_LOG": os.environ.get("RUST_LOG", "herald=info"),
                "HERALD_LISTEN": f"127.0.0.1:{port}",
                "HERALD_REDIS_URL":
                    f"redis://{REDIS_USER}:{REDIS_PASSWORD}@127.0.0.1:{self.rport}",
                "HERALD_NODE_ID": self.names[i],
                "HERALD_JWT_SECRET": JWT_SECRET,
                "HERALD_API_KEY": API_KEY,
                # Every client is 127.0.0.1 (as in benches/lib.sh): lift the per-address limits.
                "HERALD_MAX_CONNECTIONS_PER_USER": "1000000",
                "HERALD_MAX_CONNECTIONS_PER_IP": "1000000",
                "HERALD_CONNECTION_RATE_PER_IP": "1000000",
                "HERALD_TICKET_RATE_PER_IP": "1000000",
                "HERALD_TICKET_RATE_PER_USER": "1000000",
                # A short drain: the faults wait 15 to 20 s for a SIGTERMed node to exit.
                "HERALD_DRAIN_DELAY_SECS": "1",
                "HERALD_DRAIN_WINDOW_SECS": "3",
            }
            if history is not None:
                env["HERALD_HISTORY_SIZE"] = str(history)
            self.nodes.append(Proc(self.names[i], [herald, "serve"], env,
                                   os.path.join(workdir, f"{self.names[i]}.log")))
        self.ctl: Resp | None = None

    async def start_redis(self) -> None:
        self.redis.start()
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if not self.redis.alive():
                raise RunError(f"redis-server exited; see {self.redis.logpath}")
            try:
                c = await Resp.open(self.rport, timeout=0.5)
                try:
                    if await c.cmd("PING", timeout=0.5) == "PONG":
                        return
                finally:
                    c.close()
            except (RespError, *IO_ERRORS):
                pass
            await asyncio.sleep(0.05)
        raise RunError("redis-server did not answer PING within 15 s")

    async def start_node(self, i: int, bound: float = 20.0) -> float:
        """Starts node i and waits until /readyz answers 200; how long that took."""
        t = time.monotonic()
        self.nodes[i].start()
        while time.monotonic() - t < bound:
            if not self.nodes[i].alive():
                raise RunError(f"{self.names[i]} exited; see {self.nodes[i].logpath}")
            if await ready(self.ports[i]) == 200:
                return time.monotonic() - t
            await asyncio.sleep(0.1)
        raise RunError(f"{self.names[i]} not ready within {bound:.0f} s")

    async def cmd(self, *args, timeout: float = 2.0):
        """A command on the control connection (default user, opened before any fault that
        refuses new connections); reopened when it broke."""
        for attempt in range(2):
            if self.ctl is None:
                self.ctl = await Resp.open(self.rport, timeout=1.0)
            try:
                return await self.ctl.cmd(*args, timeout=timeout)
            except IO_ERRORS:
                self.ctl.close()
                self.ctl = None
                if attempt:
                    raise

    async def all_ready(self, bound: float) -> float | None:
        """Waits until every running node answers /readyz 200; how long it took, or None."""
        t = time.monotonic()
        while time.monotonic() - t < bound:
            live = [p for i, p in enumerate(self.ports) if self.nodes[i].alive()]
            codes = await asyncio.gather(*(ready(p) for p in live))
            if all(c == 200 for c in codes):
                return time.monotonic() - t
            await asyncio.sleep(0.1)
        return None

    def stop_all(self) -> None:
        for n in self.nodes:
            n.signal(signal.SIGKILL)
        self.redis.kill_now()
        for n in self.nodes:
            n.kill_now()
        if self.ctl is not None:
            self.ctl.close()


async def rejected(cl: Cluster) -> int:
    info = (await cl.cmd("INFO", "stats")).decode()
    for line in info.splitlines():
        if line.startswith("rejected_connections:"):
            return int(line.split(":")[1])
    return -1


async def auth_refusals(cl: Cluster) -> int:
    entries = await cl.cmd("ACL", "LOG")
    total = 0
    for e in entries or []:
        d = {e[i].decode() if isinstance(e[i], bytes) else e[i]: e[i + 1]
             for i in range(0, len(e) - 1, 2)}
        if d.get("reason") in (b"auth", "auth"):
            total += int(d.get("count", 0))
    return total


async def f_pubsub_kill(cl: Cluster, o) -> str:
    n = await cl.cmd("CLIENT", "KILL", "TYPE", "pubsub")
    return f"CLIENT KILL TYPE pubsub: {n} connections killed"


async def f_client_pause(cl: Cluster, o) -> str:
    await cl.cmd("CLIENT", "PAUSE", int(o.pause * 1000), "ALL")
    await asyncio.sleep(o.pause + 0.2)
    return f"CLIENT PAUSE {int(o.pause * 1000)} ALL"


async def f_sigstop(cl: Cluster, o) -> str:
    cl.redis.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(o.pause)
    finally:
        cl.redis.signal(signal.SIGCONT)
    return f"redis-server SIGSTOP, SIGCONT {o.pause:.1f} s later"


async def f_redis_kill(cl: Cluster, o) -> str:
    cl.redis.signal(signal.SIGKILL)
    rc = await cl.redis.wait(5)
    if cl.ctl is not None:
        cl.ctl.close()
        cl.ctl = None
    await asyncio.sleep(o.redis_down)
    t = time.monotonic()
    await cl.start_redis()
    return (f"redis-server SIGKILL (status {rc}), restarted on its AOF {o.redis_down:.1f} s "
            f"later, answering PING after {time.monotonic() - t:.2f} s")


async def f_maxclients(cl: Cluster, o) -> str:
    before = await rejected(cl)
    await cl.cmd("CONFIG", "SET", "maxclients", 1)
    try:
        killed = await cl.cmd("CLIENT", "KILL", "USER", REDIS_USER)
        await asyncio.sleep(o.refuse)
        after = await rejected(cl)
    finally:
        await cl.cmd("CONFIG", "SET", "maxclients", 10000)
    return (f"maxclients 1, CLIENT KILL USER {REDIS_USER} ({killed} connections), "
            f"{after - before} connections rejected in {o.refuse:.0f} s, maxclients 10000")


async def f_acl_off(cl: Cluster, o) -> str:
    before = await auth_refusals(cl)
    await cl.cmd("ACL", "SETUSER", REDIS_USER, "off")
    try:
        killed = await cl.cmd("CLIENT", "KILL", "USER", REDIS_USER)
        await asyncio.sleep(o.acl_off)
        after = await auth_refusals(cl)
    finally:
        await cl.cmd("ACL", "SETUSER", REDIS_USER, "on")
    return (f"ACL SETUSER {REDIS_USER} off, CLIENT KILL USER {REDIS_USER} ({killed} "
            f"connections), {after - before} logins refused in {o.acl_off:.0f} s, then on")


async def f_node_kill(cl: Cluster, o) -> str:
    i = 0
    cl.nodes[i].signal(signal.SIGKILL)
    rc = await cl.nodes[i].wait(5)
    await asyncio.sleep(o.node_down)
    took = await cl.start_node(i)
    return (f"{cl.names[i]} SIGKILL (status {rc}), restarted {o.node_down:.0f} s later, "
            f"ready after {took:.2f} s")


async def f_node_drain(cl: Cluster, o) -> str:
    i = 1
    t = time.monotonic()
    cl.nodes[i].signal(signal.SIGTERM)
    rc = await cl.nodes[i].wait(20)
    drained = time.monotonic() - t
    if rc is None:
        cl.nodes[i].signal(signal.SIGKILL)
        rc = await cl.nodes[i].wait(5)
        drained_note = f"still running {drained:.1f} s after SIGTERM: SIGKILLed"
    else:
        drained_note = f"exited with status {rc} after {drained:.2f} s"
    await asyncio.sleep(o.node_down)
    took = await cl.start_node(i)
    return (f"{cl.names[i]} SIGTERM (drain): {drained_note}; restarted {o.node_down:.0f} s "
            f"later, ready after {took:.2f} s")


FAULTS = [
    ("pubsub-kill", f_pubsub_kill),
    ("client-pause", f_client_pause),
    ("redis-sigstop", f_sigstop),
    ("redis-kill-restart", f_redis_kill),
    ("redis-maxclients", f_maxclients),
    ("acl-user-off", f_acl_off),
    ("node-sigkill", f_node_kill),
    ("node-drain", f_node_drain),
]


async def run_faults(cl: Cluster, o, start: float, end: float, timeline: list) -> None:
    """The chosen faults one after another, evenly spread over [start, end]; after each, how
    long until every running node answered /readyz 200 again (waited for at most until the
    next fault is due, and at least 3 s: a node that does not come back does not hold up the
    schedule)."""
    chosen = [(n, f) for n, f in FAULTS if n in o.faults]
    gap = (end - start) / max(len(chosen), 1)
    for k, (name, fn) in enumerate(chosen):
        due = start + k * gap
        if now() < due:
            await asyncio.sleep(due - now())
        if o.heal and k > 0:
            await heal(cl, timeline)
        t = now()
        log(f"fault {name} ...")
        try:
            what = await fn(cl, o)
        except (RespError, RunError, *IO_ERRORS) as e:
            what = f"FAILED TO INJECT: {type(e).__name__}: {e}"
        t_end = now()
        bound = max(3.0, start + (k + 1) * gap - now())
        back = await cl.all_ready(bound)
        ready_note = (f"all nodes ready {back:.2f} s after" if back is not None
                      else f"NOT all nodes ready within {bound:.1f} s after")
        timeline.append({"name": name, "start": t, "end": t_end, "what": what,
                         "ready": back, "bound": bound})
        log(f"fault {name}: {what}; {ready_note}")
    if o.heal and chosen:
        await heal(cl, timeline)


async def heal(cl: Cluster, timeline: list) -> None:
    """What an operator (or an orchestrator) would do about a running node that still answers
    /readyz 503 when the next fault is due: drain it (SIGTERM) and start it again. Recorded as a
    `heal` in the timeline: a node that needs it did not recover from the previous fault."""
    sick = [i for i, p in enumerate(cl.ports) if cl.nodes[i].alive() and await ready(p) != 200]
    if not sick:
        return
    t = now()
    names = ", ".join(cl.names[i] for i in sick)
    log(f"heal: {names} still not ready; draining and restarting")
    for i in sick:
        cl.nodes[i].signal(signal.SIGTERM)
    notes = []
    for i in sick:
        rc = await cl.nodes[i].wait(15)
        if rc is None:
            cl.nodes[i].signal(signal.SIGKILL)
            rc = await cl.nodes[i].wait(5)
            notes.append(f"{cl.names[i]} SIGKILLed after 15 s")
    try:
        for i in sick:
            await cl.start_node(i)
        back = await cl.all_ready(5)
    except RunError as e:
        notes.append(str(e))
        back = None
    what = (f"{names} not ready since the previous fault: drained (SIGTERM) and restarted"
            + (f" ({'; '.join(notes)})" if notes else ""))
    timeline.append({"name": "heal", "start": t, "end": now(), "what": what, "ready": back,
                     "bound": 5})
    log(f"heal: {what}")


class Readiness:
    """Samples every node's /readyz twice a second: how long each running node was not ready,
    and when its readiness changed."""

    def __init__(self, cl: Cluster):
        self.cl = cl
        n = len(cl.ports)
        self.unready = [0.0] * n          # seconds alive but not answering 200
        self.down = [0.0] * n             # seconds not running
        self.state = ["?"] * n            # last sample: "200", "503", "down", ...
        self.changes: list[list[tuple[float, str]]] = [[] for _ in range(n)]

    async def run(self, stop: asyncio.Event) -> None:
        period = 0.5
        while not stop.is_set():
            t = now()
            codes = await asyncio.gather(*(ready(p) for p in self.cl.ports))
            for i, code in enumerate(codes):
                alive = self.cl.nodes[i].alive()
                st = "down" if not alive else ("200" if code == 200 else
                                               ("no answer" if code == 0 else str(code)))
                if st != self.state[i]:
                    self.changes[i].append((t, st))
                    self.state[i] = st
                if st == "down":
                    self.down[i] += period
                elif st != "200":
                    self.unready[i] += period
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, period - (now() - t)))
            except asyncio.TimeoutError:
                pass

    def lines(self) -> list[str]:
        out = []
        for i, name in enumerate(self.cl.names):
            ch = ", ".join(f"{t:.1f}s {s}" for t, s in self.changes[i][:20])
            more = " ..." if len(self.changes[i]) > 20 else ""
            out.append(f"  {name}: now {self.state[i]}; not ready {self.unready[i]:.1f} s, "
                       f"not running {self.down[i]:.1f} s; changes: {ch}{more}")
        return out


# --------------------------------------------------------------------------------------------
# The check


def check(clients: list[Client], backend: Backend, final: dict) -> tuple[list[dict], dict]:
    """Per client (and topic): accepted, delivered, missing, announced losses, duplicates,
    out-of-order, wrong payloads; with examples of each problem."""
    rows = []
    for c in clients:
        row = Counter()
        row["rf"] = sum(len(c.state[t].rf) for t in c.topics)
        row["epoch_changes"] = sum(len(c.state[t].epoch_changes) for t in c.topics)
        problems = []
        for t in c.topics:
            st = c.state[t]
            if st.start is None:
                problems.append({"kind": "never subscribed", "topic": t})
                row["never_subscribed"] += 1
                continue
            start_epoch, start_off = st.start
            epochs = backend.epochs[t]
            if start_epoch not in epochs:
                epochs = [start_epoch] + epochs
            order = epochs[epochs.index(start_epoch):]
            for ep in order:
                acc = backend.accepted[t].get(ep, {})
                top = max(acc) if acc else 0
                if ep == final[t][0]:
                    top = max(top, final[t][1])
                lo = start_off + 1 if ep == start_epoch else 1
                seqs = st.seqs.get(ep, array("l"))
                missing = []
                for off in range(lo, top + 1):
                    confirmed = acc.get(off)
                    if confirmed is not None:
                        row["accepted"] += 1
                    got = seqs[off] if off < len(seqs) else 0
                    if got:
                        row["delivered"] += 1
                        if confirmed is not None and got != confirmed[0] + 1:
                            row["wrong_payload"] += 1
                            problems.append({"kind": "wrong payload", "topic": t, "epoch": ep,
                                             "offset": off, "got_seq": got - 1,
                                             "accepted_seq": confirmed[0]})
                        continue
                    if any(e == ep and a <= off <= b for e, a, b in st.covered):
                        row["lost_announced"] += 1
                        continue
                    row["missing"] += 1
                    if confirmed is None:
                        row["missing_unconfirmed"] += 1
                    missing.append(off)
                for a, b in ranges(missing):
                    acc_t = [acc[x][1] for x in range(a, b + 1) if x in acc]
                    problems.append({
                        "kind": "missing", "topic": t, "epoch": ep, "offsets": (a, b),
                        "accepted_at": (min(acc_t), max(acc_t)) if acc_t else None,
                        "client_was_on": c.node_at(min(acc_t)) if acc_t else "?"})
            row["duplicated"] += len(st.dups)
            row["out_of_order"] += len(st.ooo)
            row["jumps"] += len(st.jumps)
            row["before_start"] += st.before_start
            for d in st.dups[:5]:
                if d:
                    problems.append({"kind": "duplicate", "topic": t, **d})
            for d in st.ooo[:5]:
                problems.append({"kind": "out of order", "topic": t, **d})
            for d in st.jumps[:5]:
                problems.append({"kind": "jump at arrival", "topic": t, **d})
        rows.append({"client": c, "n": row, "problems": problems})
    totals = Counter()
    for r in rows:
        totals.update(r["n"])
    return rows, totals


def ranges(xs: list[int]) -> list[tuple[int, int]]:
    out = []
    for x in xs:
        if out and out[-1][1] == x - 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def fmt_counter(c: Counter) -> str:
    return " ".join(f"{k}x{v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "-"


def report(o, cl: Cluster, clients, backend, final, timeline, rows, totals, caught_up,
           readiness: Readiness) -> None:
    p = print
    p("")
    p("== Herald chaos run ==")
    p(f"nodes {', '.join(f'{n}=127.0.0.1:{pt}' for n, pt in zip(cl.names, cl.ports))}; "
      f"redis 127.0.0.1:{cl.rport} (appendonly yes, appendfsync always)")
    p(f"{len(clients)} clients, {len(o.topic_names)} topics x {o.per_client} per client, "
      f"{o.rate:g} msg/s for {o.duration:g} s")
    p("")
    p("faults (s from start):")
    for f in timeline:
        r = (f"ready +{f['ready']:.2f}s" if f["ready"] is not None
             else f"NOT READY +{f['bound']:.0f}s")
        p(f"  {f['start']:7.2f}-{f['end']:7.2f} {f['name']:<19} {r:<15} {f['what']}")
    p("")
    p("node readiness (/readyz sampled every 0.5 s while publishing):")
    for line in readiness.lines():
        p(line)
    p("")
    p(f"backend: {backend.calls} FCALLs written, {backend.ok} accepted, refused "
      f"{fmt_counter(backend.refused)}, {len(backend.unknown)} without answer (connection broke)"
      + (f", {len(backend.reused)} offsets answered twice!" if backend.reused else ""))
    for t in o.topic_names:
        acc = sum(len(v) for v in backend.accepted[t].values())
        p(f"  {t}: accepted {acc}, final offset {final[t][1]} epoch {final[t][0]}, "
          f"epochs seen {len(backend.epochs[t])}")
    p(f"caught up after publishing stopped: {caught_up}")
    p("")
    hdr = (f"{'client':<6} {'topics':<13} {'conns':>5} {'accepted':>8} {'delivered':>9} "
           f"{'missing':>7} {'lost-rf':>7} {'dup':>4} {'ooo':>4} {'rf:false':>8}  closes / refusals")
    p(hdr)
    for r in rows:
        c, n = r["client"], r["n"]
        p(f"{c.name:<6} {','.join(t.split('.')[-1] for t in c.topics):<13} {len(c.conns):>5} "
          f"{n['accepted']:>8} {n['delivered']:>9} {n['missing']:>7} {n['lost_announced']:>7} "
          f"{n['duplicated']:>4} {n['out_of_order']:>4} {n['rf']:>8}  "
          f"{fmt_counter(c.closes)} / {fmt_counter(c.failures)}")
    closes, failures, sub_errors, anomalies = Counter(), Counter(), Counter(), Counter()
    for c in clients:
        closes.update(c.closes)
        failures.update(c.failures)
        sub_errors.update(c.sub_errors)
        anomalies.update(c.anomalies)
    p("")
    p(f"TOTAL  accepted {totals['accepted']}  delivered {totals['delivered']}  "
      f"missing {totals['missing']} (of which unconfirmed by Redis' answer "
      f"{totals['missing_unconfirmed']})  duplicated {totals['duplicated']}  "
      f"out-of-order {totals['out_of_order']}  wrong-payload {totals['wrong_payload']}")
    p(f"       recovered:false {totals['rf']} (offsets lost with that notice: "
      f"{totals['lost_announced']})  epoch changes seen {totals['epoch_changes']}  "
      f"jumps at arrival {totals['jumps']}  never subscribed {totals['never_subscribed']}")
    p(f"       connections {sum(len(c.conns) for c in clients)}; ends by close code "
      f"{fmt_counter(closes)}")
    p(f"       attempts refused {fmt_counter(failures)}")
    p(f"       sub errors {fmt_counter(sub_errors)}; anomalies {fmt_counter(anomalies)}")
    shown = 0
    for r in rows:
        for pr in r["problems"]:
            if shown == 0:
                p("")
                p("problems (first 40):")
            if shown < 40:
                p(f"  {r['client'].name}: {pr}")
            shown += 1
    rf_shown = 0
    for r in rows:
        for t in r["client"].topics:
            for x in r["client"].state[t].rf + r["client"].state[t].epoch_changes:
                if rf_shown == 0:
                    p("")
                    p("announced losses (recovered:false, epoch changes; first 20): the "
                      "offsets after `since` up to the `ok`, with when Redis accepted them")
                rf_shown += 1
                if rf_shown > 20:
                    continue
                (se, so), (oe, oo) = x.get("since", x.get("from")), x.get("ok", x.get("to"))
                acc = backend.accepted[t]
                a = acc.get(se, {}).get(so + 1)
                b = acc.get(oe, {}).get(oo)
                when = (f"accepted {a[1]:.1f}s..{b[1]:.1f}s" if a and b else "")
                kind = "recovered:false" if "since" in x else "epoch change"
                p(f"  {r['client'].name} {t} {kind} at {x['t']:.1f}s on "
                  f"{r['client'].node_at(x['t'])}: since {so} -> ok {oo} "
                  f"({'same epoch' if se == oe else 'epoch ' + str(se) + ' -> ' + str(oe)}) "
                  f"{when}")


async def main(o) -> int:
    workdir = tempfile.mkdtemp(prefix="herald-chaos-")
    cl = Cluster(o.herald, workdir, o.history)
    failed = True
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, me.cancel)
    stop_clients, stop_pub = asyncio.Event(), asyncio.Event()
    clients: list[Client] = []
    tasks: list[asyncio.Task] = []
    try:
        log(f"work dir {workdir}; redis on {cl.rport}; nodes on {cl.ports}")
        await cl.start_redis()
        for i in range(3):
            await cl.start_node(i)
        topics = o.topic_names
        for i in range(o.clients):
            mine = [topics[(i + k) % len(topics)] for k in range(o.per_client)]
            clients.append(Client(i, mine, cl.ports, cl.names))
        tasks = [asyncio.create_task(c.run(stop_clients)) for c in clients]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.subscribed_once.wait() for c in clients)), 30)
        except asyncio.TimeoutError:
            raise RunError("not every client subscribed within 30 s")
        log(f"{len(clients)} clients subscribed; publishing {o.rate:g} msg/s to {len(topics)} "
            f"topics for {o.duration:g} s")
        backend = Backend(lambda: cl.rport, topics, o.rate)
        pub = asyncio.create_task(backend.run(stop_pub))
        timeline: list[dict] = []
        readiness = Readiness(cl)
        stop_probe = asyncio.Event()
        probe = asyncio.create_task(readiness.run(stop_probe))
        t0 = now()
        faults = asyncio.create_task(
            run_faults(cl, o, t0 + o.warmup, t0 + o.duration - o.quiet, timeline))
        # The faults are bounded one by one; the run waits for the last before it stops.
        await asyncio.wait_for(faults, o.duration + 180)
        rest = t0 + o.duration - now()
        if rest > 0:
            await asyncio.sleep(rest)
        stop_pub.set()
        await asyncio.wait_for(pub, 10)
        log(f"publishing stopped: {backend.ok} accepted; letting clients catch up")
        final = {}
        for t in topics:
            meta = await cl.cmd("HMGET", f"{PREFIX}{{{t}}}:meta", "epoch", "seq")
            final[t] = (meta[0].decode() if meta[0] else "?", int(meta[1] or 0))
        t_catch = time.monotonic()
        caught_up = "no"
        while time.monotonic() - t_catch < o.catchup:
            if all(c.state[t].epoch == final[t][0] and c.state[t].last >= final[t][1]
                   for c in clients for t in c.topics):
                caught_up = f"yes, within {time.monotonic() - t_catch:.2f} s"
                break
            await asyncio.sleep(0.2)
        else:
            behind = sum(1 for c in clients for t in c.topics
                         if c.state[t].epoch != final[t][0] or c.state[t].last < final[t][1])
            caught_up = f"NO: {behind} client topics behind after {o.catchup:g} s"
        stop_probe.set()
        await asyncio.wait_for(probe, 5)
        stop_clients.set()
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        rows, totals = check(clients, backend, final)
        report(o, cl, clients, backend, final, timeline, rows, totals, caught_up, readiness)
        bad = (totals["missing"] + totals["duplicated"] + totals["out_of_order"]
               + totals["wrong_payload"] + totals["never_subscribed"])
        failed = bad > 0
        unready = [n for i, n in enumerate(cl.names) if readiness.state[i] != "200"]
        heals = [f["what"].split(" not ready")[0] for f in timeline if f["name"] == "heal"]
        if heals:
            unready.append(f"heals needed ({'; '.join(heals)})")
        print("")
        print("RESULT: " + ("FAIL" if failed else "PASS") + f" (missing {totals['missing']}, "
              f"duplicated {totals['duplicated']}, out-of-order {totals['out_of_order']}, "
              f"wrong payload {totals['wrong_payload']}, recovered:false {totals['rf']})"
              + (f"; WARNING: nodes did not recover by themselves: {', '.join(unready)}"
                 if unready else ""))
        return 1 if failed else 0
    except RunError as e:
        log(f"the run could not be made: {e}")
        return 2
    except asyncio.CancelledError:
        log("interrupted")
        return 130
    finally:
        stop_clients.set()
        stop_pub.set()
        for t in tasks:
            t.cancel()
        cl.stop_all()
        warn = summarize_logs(cl)
        if warn:
            print("")
            print("node log lines at WARN/ERROR (first 8 distinct per node):")
            print(warn)
        if failed and not o.clean:
            print(f"logs kept in {workdir} (redis.log, node0.log, ...)")
            for f in os.listdir(workdir):
                if f.startswith("appendonlydir"):
                    shutil.rmtree(os.path.join(workdir, f), ignore_errors=True)
        elif not o.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def summarize_logs(cl: Cluster) -> str:
    out = []
    for n in cl.nodes:
        try:
            lines = open(n.logpath, errors="replace").read().splitlines()
        except OSError:
            continue
        seen, shown, count = set(), [], 0
        for line in lines:
            line = ANSI.sub("", line)
            if " WARN " in line or " ERROR " in line or "panicked" in line:
                count += 1
                # Strip the timestamp so that repeats collapse.
                key = line.split(" ", 1)[1] if " " in line else line
                if key not in seen:
                    seen.add(key)
                    if len(shown) < 8:
                        shown.append("    " + line[:220])
        if count:
            out.append(f"  {n.name}: {count} lines")
            out.extend(shown)
    return "\n".join(out)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="benches/chaos.sh",
        description="Bounded chaos run: 3 Herald nodes, one persistent Redis, clients that "
                    "resume with `since`, faults made for real; checks every offset.")
    ap.add_argument("--herald", default="target/release/herald", help="the herald binary")
    ap.add_argument("--duration", type=float, default=150,
                    help="seconds of publishing, faults included (default 150; the whole run "
                         "adds ~10 s of start and at most --catchup)")
    ap.add_argument("--clients", type=int, default=60,
                    help="WebSocket clients, spread over the nodes (default 60)")
    ap.add_argument("--topics", type=int, default=4, help="topics (default 4)")
    ap.add_argument("--per-client", type=int, default=2, help="topics each client subscribes to (default 2)")
    ap.add_argument("--rate", type=float, default=200, help="messages per second, all topics (default 200)")
    ap.add_argument("--catchup", type=float, default=20,
                    help="seconds the clients get to catch up after publishing stops")
    ap.add_argument("--faults", default=",".join(n for n, _ in FAULTS),
                    help="comma-separated, in this order: " + ",".join(n for n, _ in FAULTS))
    ap.add_argument("--warmup", type=float, default=8, help="seconds before the first fault")
    ap.add_argument("--quiet", type=float, default=12,
                    help="seconds without a new fault before publishing stops")
    ap.add_argument("--pause", type=float, default=2.0, help="CLIENT PAUSE / SIGSTOP seconds")
    ap.add_argument("--redis-down", type=float, default=1.0,
                    help="seconds between Redis' SIGKILL and its restart")
    ap.add_argument("--refuse", type=float, default=4.0, help="seconds of maxclients 1")
    ap.add_argument("--acl-off", type=float, default=12.0,
                    help="seconds the nodes' ACL user is off (over 10 s: subscribers are "
                         "given up with 1012 and must come back through refused reconnects)")
    ap.add_argument("--node-down", type=float, default=3.0,
                    help="seconds before a killed or drained node is restarted")
    ap.add_argument("--no-heal", dest="heal", action="store_false",
                    help="leave a node that stays not ready after a fault as it is (by default "
                         "it is drained and restarted before the next fault, and reported)")
    ap.add_argument("--history", type=int, default=None,
                    help="HERALD_HISTORY_SIZE for the nodes (default: Herald's own, 1000)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the reconnect jitter")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) even on success")
    ap.add_argument("--clean", action="store_true", help="remove the work dir even on failure")
    o = ap.parse_args(argv)
    o.faults = [f for f in o.faults.split(",") if f]
    unknown = set(o.faults) - {n for n, _ in FAULTS}
    if unknown:
        ap.error(f"unknown faults: {sorted(unknown)}")
    if not (1 <= o.per_client <= o.topics):
        ap.error("--per-client must be between 1 and --topics")
    if o.duration < o.warmup + o.quiet or o.duration > 1800 or o.clients < 1 or o.rate <= 0:
        ap.error("bad --duration/--clients/--rate (duration: warmup+quiet .. 1800 s)")
    o.topic_names = [f"chaos.t{i}" for i in range(o.topics)]
    return o


if __name__ == "__main__":
    opts = parse_args()
    if opts.seed is not None:
        random.seed(opts.seed)
    if not shutil.which(opts.herald) and not os.path.isfile(opts.herald):
        sys.exit(f"chaos.py: no herald binary at {opts.herald}")
    sys.exit(asyncio.run(main(opts)))
