"""Lab VPN client run inside a LAN namespace: sends scapy-built IKE / ESP / NAT-T / L2TP packets to
the lab responder and reports, as JSON lines on stdout, every reply it gets.

    python3 -m passthrough.lab.client esp --server 203.0.113.2 --spi 0x1111 --count 40
Each reply prints {"t": ..., "event": "reply", "seq": N, "from": "ip:port"}; the last line is
{"summary": {"sent": N, "replies": M, ...}}. Packets are built with scapy (test tooling only).
"""
import argparse
import json
import select
import socket
import struct
import sys
import time

from scapy.layers.ipsec import ESP
from scapy.layers.isakmp import ISAKMP
from scapy.layers.l2tp import L2TP

SPI_STEP = 0x1000


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def l2tp_avp(attr, value):
    return struct.pack("!HHH", 0x8000 | (6 + len(value)), 0, attr) + value


def l2tp_control(tunnel, ns, nr, mtype, extra=b""):
    avps = (l2tp_avp(0, struct.pack("!H", mtype)) if mtype is not None else b"") + extra
    hdr = L2TP(hdr="control+length+sequence", len=12 + len(avps), tunnel_id=tunnel, session_id=0, ns=ns, nr=nr)
    return bytes(hdr) + avps


class Pacer:
    """Send `count` packets (or for `duration` seconds) every `interval`, collecting replies."""

    def __init__(self, args):
        self.args = args
        self.sent = 0
        self.replies = 0
        self.first = None
        self.last = None

    def run(self, send_one, socks, on_reply):
        a = self.args
        start = time.time()
        next_send = start
        deadline = start + a.duration if a.duration else None
        while True:
            now = time.time()
            if deadline is None and self.sent >= a.count:
                if now >= next_send + a.wait:
                    break
            elif deadline is not None and now >= deadline:
                break
            if now >= next_send and (deadline is not None or self.sent < a.count):
                send_one(self.sent)
                self.sent += 1
                next_send = now + a.interval
            timeout = max(0.0, min(next_send - time.time(), 0.05))
            r, _, _ = select.select(socks, [], [], timeout)
            for s in r:
                data, peer = s.recvfrom(65535)
                seq = on_reply(s, data, peer)
                if seq is not None:
                    self.replies += 1
                    t = time.time()
                    self.first = self.first or t
                    self.last = t
                    if a.verbose:
                        emit({"event": "reply", "t": t, "seq": seq, "from": "%s:%s" % (peer[0], peer[1])})

    def summary(self, **extra):
        out = {"sent": self.sent, "replies": self.replies, "first_reply": self.first, "last_reply": self.last}
        out.update(extra)
        emit({"summary": out})


def do_esp(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    want = (a.spi + SPI_STEP) & 0xFFFFFFFF

    def send(i):
        s.sendto(bytes(ESP(spi=a.spi, seq=i + 1, data=b"ping%d" % i)), (a.server, 0))

    def reply(sock, data, peer):
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 8 or peer[0] != a.server:
            return None
        spi, seq = struct.unpack_from("!II", data, ihl)
        return seq if spi == want else None

    p = Pacer(a)
    p.run(send, [s], reply)
    p.summary(spi="%08x" % a.spi)


def _udp_socket(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    return s


def do_ike(a):
    natt = a.dport == 4500
    s = _udp_socket(a.sport)
    spi_i = struct.pack("!Q", a.spi)

    def send(i):
        # IKEv2 IKE_SA_INIT request (exchange 34), Initiator flag, message id i.
        msg = bytes(ISAKMP(init_cookie=spi_i, resp_cookie=b"\0" * 8, next_payload=0, version=0x20,
                           exch_type=34 if i == 0 else 37, flags=0x08, id=i, length=28))
        s.sendto((b"\0\0\0\0" if natt else b"") + msg, (a.server, a.dport))

    def reply(sock, data, peer):
        if natt:
            if data[:4] != b"\0\0\0\0":
                return None
            data = data[4:]
        if len(data) < 28 or data[0:8] != spi_i:
            return None
        return struct.unpack_from("!I", data, 20)[0]

    p = Pacer(a)
    p.run(send, [s], reply)
    p.summary(spi_i="%016x" % a.spi)


def do_natt_esp(a):
    s = _udp_socket(a.sport)
    want = (a.spi + SPI_STEP) & 0xFFFFFFFF

    def send(i):
        if a.keepalive and i % 5 == 0:
            s.sendto(b"\xff", (a.server, 4500))
        s.sendto(bytes(ESP(spi=a.spi, seq=i + 1, data=b"natt%d" % i)), (a.server, 4500))

    def reply(sock, data, peer):
        if len(data) < 8 or data[:4] == b"\0\0\0\0":
            return None
        spi, seq = struct.unpack_from("!II", data, 0)
        return seq if spi == want else None

    p = Pacer(a)
    p.run(send, [s], reply)
    p.summary(spi="%08x" % a.spi)


def do_l2tp(a):
    """SCCRQ -> SCCRP (follow the LNS's source port) -> SCCCN, then data (and HELLO) on the tunnel."""
    s = _udp_socket(a.sport)
    state = {"peer_port": 1701, "peer_tid": None, "ns": 0, "nr": 0}
    tid = a.tid
    s.sendto(l2tp_control(0, 0, 0, 1, l2tp_avp(9, struct.pack("!H", tid))), (a.server, 1701))
    state["ns"] = 1
    deadline = time.time() + a.setup_timeout
    while state["peer_tid"] is None and time.time() < deadline:
        r, _, _ = select.select([s], [], [], 0.1)
        if not r:
            continue
        data, peer = s.recvfrom(65535)
        if peer[0] != a.server or len(data) < 12:
            continue
        flags, length, t, sess, ns, nr = struct.unpack_from("!HHHHHH", data, 0)
        if t != tid or not flags & 0x8000:
            continue
        p = 12
        while p + 6 <= len(data):
            h, vendor, attr = struct.unpack_from("!HHH", data, p)
            alen = h & 0x3FF
            if alen < 6:
                break
            if vendor == 0 and attr == 9:
                state["peer_tid"] = struct.unpack_from("!H", data, p + 6)[0]
            p += alen
        state["peer_port"] = peer[1]
        state["nr"] = (ns + 1) & 0xFFFF
    if state["peer_tid"] is None:
        emit({"summary": {"sent": 0, "replies": 0, "error": "no SCCRP", "tid": tid}})
        return
    emit({"event": "tunnel", "t": time.time(), "peer_tid": state["peer_tid"], "peer_port": state["peer_port"]})
    dest = (a.server, state["peer_port"])
    s.sendto(l2tp_control(state["peer_tid"], state["ns"], state["nr"], 3), dest)  # SCCCN
    state["ns"] += 1
    session = 7

    def send(i):
        if a.hello_every and i and i % a.hello_every == 0:
            s.sendto(l2tp_control(state["peer_tid"], state["ns"], state["nr"], 6), dest)  # HELLO
            state["ns"] = (state["ns"] + 1) & 0xFFFF
        payload = struct.pack("!I", i) + b"data"
        s.sendto(bytes(L2TP(hdr=0, tunnel_id=state["peer_tid"], session_id=session)) + payload, dest)

    def reply(sock, data, peer):
        if peer[0] != a.server or len(data) < 6:
            return None
        flags = struct.unpack_from("!H", data, 0)[0]
        if flags & 0x8000:
            return None  # control (ZLB acks)
        off = 4 if flags & 0x4000 else 2
        t, sess = struct.unpack_from("!HH", data, off)
        off += 4
        if t != tid:
            return None
        return struct.unpack_from("!I", data, off)[0] if len(data) >= off + 4 else None

    p = Pacer(a)
    p.run(send, [s], reply)
    p.summary(tid=tid, peer_tid=state["peer_tid"], peer_port=state["peer_port"])


def do_pptp(a):
    """PPTP control connection (TCP 1723): Start-Control-Connection-Request, echoed back."""
    from scapy.layers.pptp import PPTPStartControlConnectionRequest

    msg = bytes(PPTPStartControlConnectionRequest(host_name=b"pt-lab"))
    replies = 0
    error = None
    try:
        s = socket.create_connection((a.server, 1723), timeout=a.setup_timeout)
        s.settimeout(a.setup_timeout)
        for i in range(a.count):
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            if got == msg:
                replies += 1
        s.close()
    except OSError as e:
        error = str(e) or e.__class__.__name__
    emit({"summary": {"sent": a.count, "replies": replies, "error": error}})


def main(argv=None):
    ap = argparse.ArgumentParser(description="lab VPN client (scapy-built packets)")
    ap.add_argument("kind", choices=["esp", "ike", "natt-esp", "l2tp", "pptp"])
    ap.add_argument("--server", default="203.0.113.2")
    ap.add_argument("--spi", type=lambda x: int(x, 0), default=0x1001)
    ap.add_argument("--tid", type=int, default=4242)
    ap.add_argument("--sport", type=int)
    ap.add_argument("--dport", type=int, default=500)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--duration", type=float, default=0.0, help="send for this long instead of --count")
    ap.add_argument("--wait", type=float, default=1.0, help="linger for late replies after the last send")
    ap.add_argument("--hello-every", type=int, default=0)
    ap.add_argument("--keepalive", action="store_true")
    ap.add_argument("--setup-timeout", type=float, default=5.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per reply")
    a = ap.parse_args(argv)
    if a.sport is None:
        a.sport = {"ike": a.dport, "natt-esp": 4500, "l2tp": 1701}.get(a.kind, 0)
    {"esp": do_esp, "ike": do_ike, "natt-esp": do_natt_esp, "l2tp": do_l2tp, "pptp": do_pptp}[a.kind](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
