"""A client of chipsd's user gateway not written by us: Python `websockets` (asyncio), with
Ed25519 from `cryptography`. Driven by sidecar/tests/gateway.rs:

    python ws_client.py PHASE CONFIG_JSON

Each phase asserts what it checks and prints one JSON line with what the Rust side needs next.
"""

import asyncio
import base64
import hashlib
import json
import socket
import ssl
import sys
import time
import urllib.parse
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def canonical(doc) -> bytes:
    # JSON canonical form (RFC 8785) for the documents signed here: ASCII strings, integers
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Key:
    def __init__(self, seed: bytes = None):
        self.sk = Ed25519PrivateKey.from_private_bytes(seed) if seed else Ed25519PrivateKey.generate()

    def seed(self) -> str:
        raw = self.sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        return b64url(raw)

    def public(self) -> str:
        raw = self.sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return b64url(raw)

    def sign(self, doc) -> str:
        return b64url(self.sk.sign(canonical(doc)))


class RpcError(Exception):
    def __init__(self, error):
        super().__init__(f"{error.get('code')}: {error.get('message')} {error.get('data')}")
        self.code = error.get("code")
        self.message = error.get("message")
        self.sqlstate = (error.get("data") or {}).get("sqlstate")


class Client:
    """Responses are matched to requests by id; notifications go to a queue."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.waiting = {}
        self.events = asyncio.Queue()
        self.notes = asyncio.Queue()
        self.reader = asyncio.create_task(self.read())

    @classmethod
    async def open(cls, url, ssl_ctx=None, **kw):
        ws = await connect(url, ssl=ssl_ctx, **kw)
        return cls(ws)

    async def read(self):
        try:
            async for text in self.ws:
                msg = json.loads(text)
                if isinstance(msg, dict) and msg.get("method") == "event":
                    await self.events.put(msg["params"])
                elif isinstance(msg, dict) and "method" in msg:
                    await self.notes.put(msg)
                elif isinstance(msg, dict) and msg.get("id") in self.waiting:
                    self.waiting.pop(msg["id"]).set_result(msg)
                else:
                    await self.notes.put(msg)
        except ConnectionClosed:
            pass
        for f in self.waiting.values():
            if not f.done():
                f.set_exception(ConnectionError("connection closed"))

    async def raw(self, text, timeout=10):
        """Sends any text frame; returns the next message that is not an event."""
        await self.ws.send(text)
        return await asyncio.wait_for(self.notes.get(), timeout)

    async def call(self, method, **params):
        self.next_id += 1
        i = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.waiting[i] = fut
        await self.ws.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, 15)
        if "error" in msg:
            raise RpcError(msg["error"])
        return msg["result"]

    async def refused(self, method, **params):
        try:
            r = await self.call(method, **params)
        except RpcError as e:
            return e
        raise AssertionError(f"{method} {params} was not refused: {r}")

    async def event(self, timeout=10):
        return await asyncio.wait_for(self.events.get(), timeout)

    async def close(self):
        await self.ws.close()
        await self.reader


async def login(url, ent, key, ticket=None, ssl_ctx=None):
    c = await Client.open(url, ssl_ctx)
    if ticket:
        assert await c.call("login.register", token=ticket, pubkey=key.public(), label="test") == ent
    doc = await c.call("login.challenge", ent=ent, pubkey=key.public())
    r = await c.call("login.finish", challenge=doc["challenge"], signature=key.sign(doc))
    assert r["ent"] == ent, r
    return c


def http_get(url, ctx=None):
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


async def phase1(cfg):
    url, http = cfg["ws"], cfg["http"]
    ann_ent, bob_ent, eve_ent = cfg["ents"]["ann"], cfg["ents"]["bob"], cfg["ents"]["eve"]

    # -- an unauthenticated call is refused, and the connection stays usable
    c = await Client.open(url)
    e = await c.refused("tallies.list")
    assert (e.code, e.sqlstate) == (-32001, "28000"), e
    # -- malformed messages get errors and the connection survives
    m = await c.raw("{not json")
    assert m["error"]["code"] == -32700 and m["id"] is None, m
    m = await c.raw(json.dumps({"jsonrpc": "1.0", "id": 7, "method": "me"}))
    assert m["error"]["code"] == -32600 and m["id"] == 7, m
    m = await c.raw(json.dumps([]))
    assert m["error"]["code"] == -32600, m
    await c.ws.send(b"\x00binary")
    m = await asyncio.wait_for(c.notes.get(), 10)
    assert m["error"]["code"] == -32600, m
    e = await c.refused("no.such.method")
    assert e.code == -32601, e
    e = await c.refused("login.challenge", ent="p1")
    assert e.code == -32602 and "pubkey" in e.message, e
    methods = await c.call("rpc.methods")
    assert "pay" in methods["user"] and "login.finish" in methods["login"], methods
    # a batch: two answers, in order; a notification (no id) gets none
    m = await c.raw(json.dumps([{"jsonrpc": "2.0", "id": "a", "method": "rpc.methods"},
                                {"jsonrpc": "2.0", "method": "rpc.methods"},
                                {"jsonrpc": "2.0", "id": "b", "method": "tallies.list"}]))
    assert [x["id"] for x in m] == ["a", "b"] and m[1]["error"]["code"] == -32001, m

    # -- login: a one-time ticket registers a key; the key signs the server's challenge
    ann_key, bob_key, eve_key, mallory = Key(), Key(), Key(), Key()
    assert await c.call("login.register", token=cfg["tickets"]["ann"], pubkey=ann_key.public()) == ann_ent
    e = await c.refused("login.register", token=cfg["tickets"]["ann"], pubkey=mallory.public())
    assert e.sqlstate == "28000", e  # a ticket is good once
    doc = await c.call("login.challenge", ent=ann_ent, pubkey=mallory.public())
    e = await c.refused("login.finish", challenge=doc["challenge"], signature=mallory.sign(doc))
    assert e.sqlstate == "28000", e  # an unregistered key
    doc = await c.call("login.challenge", ent=ann_ent, pubkey=ann_key.public())
    e = await c.refused("login.finish", challenge=doc["challenge"], signature=mallory.sign(doc))
    assert e.sqlstate == "28000", e  # a signature by another key
    r = await c.call("login.finish", challenge=doc["challenge"], signature=ann_key.sign(doc))
    assert r["ent"] == ann_ent, r
    e = await c.refused("login.finish", challenge=doc["challenge"], signature=ann_key.sign(doc))
    assert e.sqlstate == "28000", e  # a challenge opens one session
    assert await c.call("logout") is True
    e = await c.refused("tallies.list")
    assert e.code == -32001, e
    await c.close()

    ann = await login(url, ann_ent, ann_key, None)
    bob = await login(url, bob_ent, bob_key, cfg["tickets"]["bob"])
    eve = await login(url, eve_ent, eve_key, cfg["tickets"]["eve"])
    assert (await ann.call("me"))["chad"]["cuid"] == "ann"

    # -- Ann subscribes from the start, then a tally is made and used, all through the API
    r = await ann.call("subscribe", cursor=0)
    assert r == {"subscribed": True, "cursor": 0}, r
    tally = await ann.call("tally.create", side="stock", hold_terms={"limit": 1000}, memo="ws")
    ticket = await ann.call("ticket.create", tally=tally)
    assert await bob.call("ticket.redeem", ticket=ticket) == tally
    assert await ann.call("tally.offer", tally=tally) == "H.offer"
    assert await bob.call("tally.accept", tally=tally) == "open"
    chit = await bob.call("pay", tally=tally, units=5, memo="coffee")
    inv = await ann.call("invoice", tally=tally, units=2, memo="tea")
    assert await bob.call("invoice.accept", tally=tally, chit=inv) == "good"
    await bob.call("tally.trade", tally=tally, settings={"target": 0, "bound": 0})
    # bad values come back with the database's SQLSTATE
    e = await bob.refused("pay", tally=tally, units="lots")
    assert (e.code, e.sqlstate) == (-32000, "22P02"), e
    e = await bob.refused("pay", tally=tally, units=1_000_000)
    assert e.sqlstate is not None and e.code == -32000, e
    # a batch all or nothing: one item over the limit refuses it all (chits.list below counts)
    e = await bob.refused("pay.batch", payments=[{"tally": tally, "units": 1}, {"tally": tally, "units": 1_000_000}],
                          all_or_nothing=True)
    assert (e.code, e.sqlstate) == (-32000, "23514"), e
    # paying a CHIP address: Ann takes no lifts (target 0), so no route reaches her
    chad = (await ann.call("me"))["chad"]
    e = await bob.refused("pay.address", address={"cuid": chad["cuid"], "agent": chad["agent"]}, units=1)
    assert (e.code, e.sqlstate) == (-32000, "55000"), e
    # and a route check says so before paying (Ann is at this site: answered at once)
    r = await bob.call("route.check", address={"cuid": chad["cuid"], "agent": chad["agent"]}, units=1)
    assert r == {"query": None, "status": "none", "carries": False, "max": 0}, r
    e = await bob.refused("route.check", address={"cuid": chad["cuid"], "agent": chad["agent"]}, units=0)
    assert (e.code, e.sqlstate) == (-32000, "22023"), e
    e = await bob.refused("route.check_result", query="no-such-query")
    assert (e.code, e.sqlstate) == (-32000, "42704"), e

    seen = []
    while not (any(e["kind"] == "chit" and e["data"]["chit"] == inv and e["data"]["status"] == "good"
                   for e in seen)
               and any(e["kind"] == "chit" and e["data"]["type"] == "set" for e in seen)):
        seen.append(await ann.event())
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1)), seen
    kinds = [(e["kind"], e["data"].get("state") or e["data"].get("status")) for e in seen]
    assert ("tally", "open") in kinds, kinds
    pay_ev = [e for e in seen if e["kind"] == "chit" and e["data"]["chit"] == chit]
    assert len(pay_ev) == 1 and pay_ev[0]["data"]["change"] == 5, pay_ev

    lists = await ann.call("tallies.list")
    assert [t["tally_uuid"] for t in lists] == [tally], lists
    chits = await ann.call("chits.list", tally=tally)
    assert sorted(c["chit_type"] for c in chits) == ["set", "tran", "tran"], chits

    # -- Eve cannot reach Ann's or Bob's rows, even knowing their ids
    e = await eve.refused("tally.get", tally=tally)
    assert e.sqlstate == "42704", e
    assert await eve.call("chits.list", tally=tally) == []
    assert await eve.call("tallies.list") == []
    assert await eve.call("lifts.list") == []
    e = await eve.refused("invoice.decline", tally=tally, chit=inv)
    assert e.sqlstate == "42704", e
    e = await eve.refused("pay", tally=tally, units=1)
    assert e.sqlstate == "42704", e
    rows = await eve.call("pay.batch", payments=[{"tally": tally, "units": 1}, {"tally": tally, "units": "lots"},
                                                 {"tally": tally, "units": 1, "payer": cfg["ents"]["bob"]}])
    assert [(r["item"], r["chit"], r["sqlstate"]) for r in rows] == \
        [(1, None, "42704"), (2, None, "22023"), (3, None, "42501")], rows
    e = await eve.refused("pay.batch", payments={"tally": tally})
    assert (e.code, e.sqlstate) == (-32000, "22023"), e
    assert all(ev["data"].get("tally") != tally for ev in await eve.call("events.since", cursor=0))
    e = await eve.refused("events.since", cursor=10_000)
    assert e.sqlstate == "22023", e

    # -- HTTP on the same server
    status, _, body = http_get(f"{http}/health")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    status, headers, body = http_get(f"{http}/doc/{cfg['contract']}")
    assert status == 200 and headers["Content-Type"] == "application/json", (status, body)
    assert b64url(hashlib.sha256(body).digest()) == cfg["contract"]
    hexname = unb64url(cfg["contract"]).hex()
    assert http_get(f"{http}/doc/{hexname}")[2] == body
    status, headers, body2 = http_get(f"{http}/doc/{cfg['file']}")
    assert status == 200 and headers["Content-Type"] == "text/plain" and body2 == b"hello, chips\n"
    assert http_get(f"{http}/doc/{'A' * 43}")[0] == 404
    assert http_get(f"{http}/doc/not-a-hash")[0] == 400
    status, _, body = http_get(f"{http}/metrics")
    text = body.decode()
    assert status == 200 and "chipsd_ws_accepted_total 4" in text, text
    assert 'chipsd_events_delivered_total{kind="chit"}' in text, text
    assert 'chipsd_errors_total{kind="parse"} 1' in text, text

    cursor = seen[-1]["seq"]
    for x in (ann, bob, eve):
        await x.close()
    print(json.dumps({"tally": tally, "cursor": cursor, "ann": ann_key.seed(), "bob": bob_key.seed()}))


async def phase2(cfg):
    """After the Rust side restarted chipsd and Bob paid 3 times without Ann connected."""
    url, st = cfg["ws"], cfg["state"]
    ann_ent, bob_ent = cfg["ents"]["ann"], cfg["ents"]["bob"]
    ann = await login(url, ann_ent, Key(unb64url(st["ann"])))
    await ann.call("subscribe", cursor=st["cursor"])
    missed = [await ann.event() for _ in range(3)]
    assert [e["seq"] for e in missed] == [st["cursor"] + i for i in (1, 2, 3)], missed
    assert [e["data"]["units"] for e in missed] == [1, 2, 3], missed
    assert all(e["kind"] == "chit" and e["data"]["change"] > 0 for e in missed), missed
    # then live: Bob pays over his own connection, Ann sees it next, once
    bob = await login(url, bob_ent, Key(unb64url(st["bob"])))
    await bob.call("pay", tally=st["tally"], units=4, memo="live")
    live = await ann.event()
    assert live["seq"] == st["cursor"] + 4 and live["data"]["units"] == 4, live
    try:
        extra = await ann.event(timeout=1)
        raise AssertionError(f"a duplicate or stray event: {extra}")
    except asyncio.TimeoutError:
        pass
    # logging out ends the session in the database: the next user call is refused
    assert await ann.call("logout") is True
    e = await ann.refused("tallies.list")
    assert e.code == -32001, e
    await ann.close()
    await bob.close()
    print(json.dumps({"ok": True}))


async def limits(cfg):
    """Against a chipsd with TLS and small limits: rate, message size, idle, connections."""
    ctx = ssl.create_default_context(cafile=cfg["ca"])
    url, http = cfg["ws"], cfg["http"]
    status, _, body = http_get(f"{http}/health", ctx)
    assert status == 200, body
    c = await Client.open(url, ctx)
    # rate: a burst of 10 then 5 a second (per address before login)
    over = []
    for _ in range(20):
        try:
            await c.call("rpc.methods")
        except RpcError as e:
            over.append(e)
    assert over and all(e.code == -32029 for e in over), over
    await asyncio.sleep(1.0)
    assert "user" in await c.call("rpc.methods")  # tokens come back; the connection survived
    # size: a message over the limit closes the connection with 1009
    await c.ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "rpc.methods", "params": {"x": "y" * 5000}}))
    await c.reader
    assert c.ws.close_code == 1009, c.ws.close_code
    # connections: at most 3 websockets at once
    held = [await Client.open(url, ctx) for _ in range(3)]
    try:
        await Client.open(url, ctx)
        raise AssertionError("a 4th connection was accepted")
    except InvalidStatus as e:
        assert e.response.status_code == 503, e
    for h in held:
        await h.close()
    # idle: a client that says nothing and answers no ping (a raw socket after the handshake)
    u = urllib.parse.urlparse(url)
    raw = ctx.wrap_socket(socket.create_connection((u.hostname, u.port)), server_hostname=u.hostname)
    raw.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 101"), "no upgrade"
    raw.settimeout(30)
    t0 = time.monotonic()
    while raw.recv(4096):
        pass
    waited = time.monotonic() - t0
    assert waited < 25, waited
    print(json.dumps({"ok": True, "rate_refused": len(over), "idle_closed_after_s": round(waited, 1)}))


if __name__ == "__main__":
    phase, cfg = sys.argv[1], json.loads(sys.argv[2])
    asyncio.run({"phase1": phase1, "phase2": phase2, "limits": limits}[phase](cfg))
