"""A scripted VPN server for the lab's WAN namespace (no crypto: it answers headers, not tunnels).

It answers what the LAN-side test clients send, so the router in between sees realistic flows:
- raw ESP (IP proto 50): echoes the payload under "its own" SPI (client SPI + SPI_STEP), same seq;
- IKE on UDP 500 and on 4500 after the non-ESP marker: answers with the same initiator SPI, its own
  responder SPI and the R flag; ESP-in-UDP on 4500 is echoed like raw ESP; 0xFF keepalives ignored;
- L2TPv2 on UDP 1701: SCCRQ -> SCCRP (optionally from another source port, RFC 2661 §8.1),
  SCCCN/HELLO/ICRQ... -> ZLB ack, data -> echoed back on the client's tunnel/session ids;
- PPTP control on TCP 1723: every message echoed back.
With --peer-log FILE, the first datagram from each (service port, peer address, peer port) adds a
JSON line {"service": port, "peer": ip, "port": n} to FILE: what the server saw of the router's
NAT (which source ports LAN hosts appear with).
Real peers (strongSwan, xl2tpd) are exercised separately; this one is small and fully predictable.
"""
import argparse
import json
import os
import select
import socket
import struct
import sys

SPI_STEP = 0x1000  # reply SPI = request SPI + SPI_STEP: lets tests predict which SA answers


def reply_spi(spi):
    return (spi + SPI_STEP) & 0xFFFFFFFF or 1


def ike_reply(msg):
    """Answer an IKE message: same SPI_i, responder SPI derived from it, R flag (v2) set."""
    if len(msg) < 28:
        return None
    spi_i = msg[0:8]
    spi_r = msg[8:16]
    if spi_r == b"\0" * 8:
        spi_r = bytes((b ^ 0x5A) for b in spi_i)
    version, exch, flags = msg[17], msg[18], msg[19]
    msgid = msg[20:24]
    if version >> 4 == 2:
        flags = (flags | 0x20) & ~0x08  # Response, not Initiator
    body = b"reply"
    return spi_i + spi_r + bytes((0, version, exch, flags)) + msgid + struct.pack("!I", 28 + len(body)) + body


L2TP_T, L2TP_L, L2TP_S = 0x8000, 0x4000, 0x0800


def l2tp_avp(attr, value, mandatory=True):
    return struct.pack("!HHH", (0x8000 if mandatory else 0) | (6 + len(value)), 0, attr) + value


def l2tp_control(tunnel, session, ns, nr, avps):
    length = 12 + len(avps)
    return struct.pack("!HHHHHH", L2TP_T | L2TP_L | L2TP_S | 2, length, tunnel, session, ns, nr) + avps


class L2tpServer:
    """Minimal LNS state: our tunnel id per (client addr, client tunnel id)."""

    def __init__(self):
        self.tunnels = {}  # (ip, client_tid) -> dict(ours=, ns=, nr=)
        self.by_ours = {}
        self.next_tid = 100

    def handle(self, msg, peer):
        if len(msg) < 6:
            return None
        flags = struct.unpack_from("!H", msg, 0)[0]
        if flags & 0x0F != 2:
            return None
        off = 2
        if flags & L2TP_L:
            off += 2
        tid, sid = struct.unpack_from("!HH", msg, off)
        off += 4
        ns = nr = 0
        if flags & L2TP_S:
            ns, nr = struct.unpack_from("!HH", msg, off)
            off += 4
        if not flags & L2TP_T:  # data: echo on the client's ids
            t = self.by_ours.get((peer[0], tid))
            if t is None:
                return None
            return struct.pack("!HHH", 0x0002, t["client"], sid) + msg[off:]
        avps = msg[off:]
        mtype, assigned = None, None
        p = 0
        while p + 6 <= len(avps):
            hdr, vendor, attr = struct.unpack_from("!HHH", avps, p)
            alen = hdr & 0x3FF
            if alen < 6:
                break
            val = avps[p + 6:p + alen]
            if vendor == 0 and attr == 0 and len(val) >= 2:
                mtype = struct.unpack("!H", val[:2])[0]
            if vendor == 0 and attr == 9 and len(val) >= 2:
                assigned = struct.unpack("!H", val[:2])[0]
            p += alen
        if mtype == 1 and assigned is not None:  # SCCRQ
            key = (peer[0], assigned)
            t = self.tunnels.get(key)
            if t is None:
                t = {"ours": self.next_tid, "client": assigned, "ns": 0}
                self.next_tid += 1
                self.tunnels[key] = t
                self.by_ours[(peer[0], t["ours"])] = t
            body = l2tp_avp(0, struct.pack("!H", 2)) + l2tp_avp(2, struct.pack("!H", 0x0100)) + \
                l2tp_avp(7, b"pt-lns") + l2tp_avp(9, struct.pack("!H", t["ours"]))
            t["nr"] = (ns + 1) & 0xFFFF
            out = l2tp_control(assigned, 0, t["ns"], t["nr"], body)
            t["ns"] = (t["ns"] + 1) & 0xFFFF
            return out
        t = self.by_ours.get((peer[0], tid))
        if t is None:
            return None
        if mtype is None:  # ZLB from the client: nothing to ack
            return None
        t["nr"] = (ns + 1) & 0xFFFF
        if mtype == 4:  # StopCCN
            self.tunnels.pop((peer[0], t["client"]), None)
            self.by_ours.pop((peer[0], tid), None)
        return l2tp_control(t["client"], 0, t["ns"], t["nr"], b"")  # ZLB ack


def esp_reply(msg):
    if len(msg) < 8:
        return None
    spi, seq = struct.unpack_from("!II", msg, 0)
    return struct.pack("!II", reply_spi(spi), seq) + msg[8:]


class PeerLog:
    """Records each (service, peer address, peer port) once, flushed at once: a test reads it
    while the responder runs."""

    def __init__(self, path):
        self.path = path
        self.seen = set()

    def saw(self, service, peer):
        if self.path is None or (service, peer[0], peer[1]) in self.seen:
            return
        self.seen.add((service, peer[0], peer[1]))
        with open(self.path, "a") as f:
            f.write(json.dumps({"service": service, "peer": peer[0], "port": peer[1]}, sort_keys=True) + "\n")


def serve(bind_ip, l2tp_reply_port, ready_file=None, peer_log=None):
    socks = {}
    esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    socks[esp.fileno()] = ("esp", esp)
    for port in (500, 4500, 1701):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind_ip, port))
        socks[s.fileno()] = (port, s)
    pptp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    pptp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    pptp.bind((bind_ip, 1723))
    pptp.listen(16)
    socks[pptp.fileno()] = ("pptp-listen", pptp)
    alt = None
    if l2tp_reply_port and l2tp_reply_port != 1701:
        alt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        alt.bind((bind_ip, l2tp_reply_port))
        socks[alt.fileno()] = (1701, alt)  # clients follow the new port (RFC 2661 §8.1)
    lns = L2tpServer()
    peers = PeerLog(peer_log)
    stats = {"esp": 0, "ike": 0, "natt_esp": 0, "keepalive": 0, "l2tp": 0}
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(str(os.getpid()))
    while True:
        ready, _, _ = select.select(list(socks), [], [], 1.0)
        for fd in ready:
            kind, s = socks[fd]
            if kind == "pptp-listen":  # PPTP control (TCP 1723): echo each message back
                conn, _ = s.accept()
                socks[conn.fileno()] = ("pptp", conn)
                continue
            if kind == "pptp":
                data = s.recv(4096)
                if data:
                    s.sendall(data)
                else:
                    del socks[fd]
                    s.close()
                continue
            if kind == "esp":
                pkt, peer = s.recvfrom(65535)
                if bind_ip != "0.0.0.0" and socket.inet_ntoa(pkt[16:20]) != bind_ip:
                    continue  # raw sockets see every ESP packet of the namespace
                ihl = (pkt[0] & 0x0F) * 4
                out = esp_reply(pkt[ihl:])
                stats["esp"] += 1
                if out:
                    s.sendto(out, (peer[0], 0))
                continue
            msg, peer = s.recvfrom(65535)
            peers.saw(kind, peer)
            out = None
            if kind == 500:
                stats["ike"] += 1
                out = ike_reply(msg)
            elif kind == 4500:
                if msg == b"\xff":
                    stats["keepalive"] += 1
                elif msg[:4] == b"\0\0\0\0":
                    stats["ike"] += 1
                    r = ike_reply(msg[4:])
                    out = b"\0\0\0\0" + r if r else None
                else:
                    stats["natt_esp"] += 1
                    out = esp_reply(msg)
            elif kind == 1701:
                stats["l2tp"] += 1
                out = lns.handle(msg, peer)
                if out is not None and alt is not None:
                    alt.sendto(out, peer)
                    continue
            if out is not None:
                s.sendto(out, peer)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--l2tp-reply-port", type=int, default=1701)
    ap.add_argument("--ready-file")
    ap.add_argument("--peer-log", help="append each new UDP peer (service, address, port) as a JSON line")
    a = ap.parse_args(argv)
    try:
        serve(a.bind, a.l2tp_reply_port, a.ready_file, a.peer_log)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
