"""A peer written with PyPI's `noiseprotocol` (not our code) talks to chipsd.

usage: interop_noise.py HOST PORT CHIPSD_AGENT OUR_SEED_B64URL OUR_AGENT LOCAL_CUID

Derives both X25519 keys itself (the Ed25519 seed hashed and clamped; the responder's
Edwards point mapped to Montgomery), runs Noise_IK_25519_ChaChaPoly_BLAKE2b with the chips
framing, sends one envelope and prints chipsd's decrypted reply as JSON.
"""
import base64
import hashlib
import json
import socket
import struct
import sys
import uuid

from noise.connection import Keypair, NoiseConnection

P = 2**255 - 19


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def x25519_private(seed):
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return bytes(h)


def x25519_public_of_ed25519(pub):
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % P, P - 2, P) % P
    return u.to_bytes(32, "little")


def send_frame(sock, kind, payload):
    body = kind + payload
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("connection closed")
        data += chunk
    return data


def recv_frame(sock):
    (length,) = struct.unpack(">I", recv_exact(sock, 4))
    body = recv_exact(sock, length)
    return body[:1], body[1:]


def main(host, port, chipsd_agent, seed, our_agent, cuid):
    noise = NoiseConnection.from_name(b"Noise_IK_25519_ChaChaPoly_BLAKE2b")
    noise.set_as_initiator()
    noise.set_keypair_from_private_bytes(Keypair.STATIC, x25519_private(b64d(seed)))
    noise.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, x25519_public_of_ed25519(b64d(chipsd_agent)))
    noise.start_handshake()
    sock = socket.create_connection((host, int(port)), timeout=10)
    hello = json.dumps({"agent": our_agent, "version": 1}).encode()
    send_frame(sock, b"I", noise.write_message(hello))
    kind, reply = recv_frame(sock)
    assert kind == b"A", kind
    noise.read_message(reply)
    assert noise.handshake_finished
    envelope = {
        "id": str(uuid.uuid4()),
        "target": "tally",
        "action": "void",
        "from": {"cuid": "py", "agent": our_agent},
        "to": {"cuid": cuid, "agent": chipsd_agent},
        "object": {"uuid": str(uuid.uuid4()), "revision": 1},
    }
    send_frame(sock, b"T", noise.encrypt(json.dumps(envelope).encode()))
    kind, reply = recv_frame(sock)
    assert kind == b"T", kind
    answer = json.loads(noise.decrypt(reply))
    answer["sent_id"] = envelope["id"]
    print(json.dumps(answer))


if __name__ == "__main__":
    main(*sys.argv[1:])
