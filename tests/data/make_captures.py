#!/usr/bin/env python3
"""Make the reference captures in tests/data/captures/ with real peers (needs root).

Two namespaces joined by one veth pair (client 203.0.113.10, server 203.0.113.2, no NAT);
tcpdump -s 0 -U -w (classic pcap) on the server-side veth. Peers: strongSwan charon with
kernel-libipsec, xl2tpd (see passthrough/lab/peers.py).

    python3 tests/data/make_captures.py            # all
    python3 tests/data/make_captures.py ikev1_main_quick l2tp_control
    python3 tests/data/make_captures.py --list

The captures are not byte-for-byte reproducible (SPIs, nonces, keys, tunnel ids are random),
the sequence of messages is. l2tp_control takes ~62 s because xl2tpd sends HELLO after 60 s idle.
"""
import argparse
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from passthrough.lab import peers as P  # noqa: E402

OUT = os.path.join(HERE, "captures")
SUBNET_ADDR = "192.168.77.1/24"   # server-side protected address (on lo)
PING_DST = "192.168.77.1"


def pcap_udp(path):
    """(ts, src, sport, dst, dport, payload) of the IPv4/UDP packets of a classic pcap (Ethernet)."""
    res = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return res
    if len(data) < 24:
        return res
    magic = data[:4]
    end = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    while off + 16 <= len(data):
        sec, usec, incl, _orig = struct.unpack(end + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < incl or len(pkt) < 14 + 20 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] != 17 or len(ip) < ihl + 8:
            continue
        sport, dport, ulen = struct.unpack("!HHH", ip[ihl:ihl + 6])
        res.append((sec + usec / 1e6, ".".join(map(str, ip[12:16])), sport,
                    ".".join(map(str, ip[16:20])), dport, ip[ihl + 8:ihl + ulen]))
    return res


def wait_pcap(path, pred, timeout, what):
    """Wait until some UDP packet of the (growing) pcap satisfies pred."""
    return P.wait_for(lambda: any(pred(p) for p in pcap_udp(path)), timeout, interval=0.2, what=what)


def l2tp_type(payload):
    """L2TP control message type (int), 0 for a ZLB, None for data / not L2TP v2."""
    if len(payload) < 12 or not payload[0] & 0x80 or payload[1] & 0x0f != 2:
        return None
    if len(payload) == 12:
        return 0
    # T, L, S set: 12-byte header, first AVP is Message Type (6-byte AVP header + 2-byte value)
    return struct.unpack("!H", payload[18:20])[0]


def wait_acked(path, msg_type, sender, timeout=10):
    """Wait until an L2TP control message `msg_type` sent by `sender` is followed by a ZLB from
    the other side."""
    def check():
        seen = False
        for p in pcap_udp(path):
            t = l2tp_type(p[5])
            if t == msg_type and p[1] == sender:
                seen = True
            elif seen and t == 0 and p[3] == sender:
                return True
    return P.wait_for(check, timeout, interval=0.2, what="ZLB ack of L2TP message %d" % msg_type)


class Retry(Exception):
    """The peers raced into a less useful (but valid) exchange: make the capture again."""


def l2tp_settled(s):
    """After the call came up: wait for the CDN (real pppd fails without /dev/ppp) and its ZLB
    ack. With the real pppd on both sides the CDNs often cross and xl2tpd 1.3.18 then drops the
    LAC's later messages as out of order ("Received out of order control packet"); the LAC
    therefore runs the pppd stub, and a CDN from the LAC means: make the capture again (Retry)."""
    def cdn_acked():
        seen = None
        for p in pcap_udp(s.path):
            t = l2tp_type(p[5])
            if t == 14:
                seen = p[1]
            elif t == 0 and seen and p[3] == seen:
                return True
    P.wait_for(cdn_acked, 10, interval=0.1, what="CDN acked")
    s.cap.settle(0.3)
    if any(l2tp_type(p[5]) == 14 and p[1] == s.pair.CLIENT_IP for p in pcap_udp(s.path)):
        raise Retry("LAC sent CDN too (its pppd failed first)")


def is_keepalive(p):
    return p[4] == 4500 and p[5] == b"\xff"


class Setup:
    """Direct pair + capture on the server veth; peers registered here are stopped on exit."""

    def __init__(self, name, outdir, bpf="udp"):
        self.path = os.path.join(outdir, name + ".pcap")
        self.pair = P._DirectPair("pt-pr-mk%d" % os.getpid())
        self.bpf = bpf
        self.peers = []
        self.cap = None
        self.entered = False

    def __enter__(self):
        if self.entered:  # _ipsec() enters before the caller's `with`
            return self
        self.entered = True
        self.pair.up()
        try:
            if os.path.exists(self.path):
                os.unlink(self.path)
            self.cap = P.Capture(self.pair.server, self.pair.IFACE, self.path, self.bpf).start()
        except Exception:
            self.pair.down()
            raise
        return self

    def add(self, peer):
        self.peers.append(peer)
        return peer.start()

    def __exit__(self, *exc):
        try:
            for p in reversed(self.peers):
                p.stop()
            if self.cap:
                self.cap.stop()
        finally:
            self.pair.down()


NAPT_PORTS = {500: 35500, 4500: 34500}


def client_napt(ns, ip):
    """Put the client behind NAT inside its own namespace: source ports 500/4500 are mapped to
    35500/34500 on the way out (conntrack SNAT, replies translated back). charon then logs
    "local host is behind NAT" and sends NAT-T keepalives, as behind a real NAT router."""
    rules = "table ip pt_mk_napt {\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n"
    for src, dst in sorted(NAPT_PORTS.items()):
        rules += "    udp sport %d snat to %s:%d\n" % (src, ip, dst)
    rules += "  }\n}\n"
    P.run(["nft", "-f", "-"], ns=ns, input=rules)


def _ipsec(name, outdir, version=2, client_kw=None, server_kw=None, keep_alive=None, libipsec=True,
           napt=False, extra_conf=""):
    s = Setup(name, outdir)
    s.__enter__()
    try:
        if napt:
            client_napt(s.pair.client, s.pair.CLIENT_IP)
        # before charon starts: a new address later makes it send a MOBIKE address update
        P.add_address(s.pair.server, SUBNET_ADDR)
        srv = s.add(P.Charon(s.pair.server, None, "server", libipsec=libipsec, extra_conf=extra_conf))
        cli = s.add(P.Charon(s.pair.client, None, "client", keep_alive=keep_alive, libipsec=libipsec,
                             extra_conf=extra_conf))
        srv.load(P.gateway_conf(s.pair.SERVER_IP, version=version, **(server_kw or {})))
        cli.load(P.roadwarrior_conf(s.pair.CLIENT_IP, s.pair.SERVER_IP, version=version,
                                    **(client_kw or {})))
    except Exception:
        s.__exit__(None, None, None)
        raise
    return s, srv, cli


def _tunnel_traffic(cli, n=3):
    got, pin, pout = P.ping_through_tunnel(cli, PING_DST, n)
    assert got == n and pin >= n and pout >= n, (got, pin, pout)


def cap_ikev2_natt_forced(outdir):
    """IKEv2 with encap=yes, no NAT: IKE_SA_INIT on 500, IKE_AUTH on 4500 (non-ESP marker),
    3 pings as ESP-in-UDP both ways, INFORMATIONAL DELETE. No keepalives: strongSwan sends them
    only when its own side is behind NAT (see ikev2_natt_keepalive)."""
    _sa_pings_delete("ikev2_natt_forced", outdir, 2, client_kw={"encap": True})


def _natt_keepalive(name, outdir, version):
    """Client behind NAPT: SA up, NAT detected, pings as ESP-in-UDP, a keepalive seen, DELETE."""
    s, srv, cli = _ipsec(name, outdir, version, keep_alive=2, napt=True)
    with s:
        cli.initiate("net", "rw")
        cli.wait_child_up("net")
        assert cli.nat_here(), "client did not detect its NAT"
        _tunnel_traffic(cli)
        wait_pcap(s.path, is_keepalive, 10, "NAT-T keepalive")
        cli.terminate(ike="rw")
        srv.wait_no_sas()


def cap_ikev2_natt_keepalive(outdir):
    """IKEv2, client behind NAPT (500->35500, 4500->34500 in its own namespace): IKE_SA_INIT
    from :35500 to 500, IKE_AUTH from :34500 to 4500, 3 pings as ESP-in-UDP, NAT-T keepalives
    (0xFF, keep_alive = 2s) from :34500, INFORMATIONAL DELETE."""
    _natt_keepalive("ikev2_natt_keepalive", outdir, 2)


def _sa_pings_delete(name, outdir, version, **ipsec_kw):
    """SA up, 3 pings through the tunnel, DELETE."""
    s, srv, cli = _ipsec(name, outdir, version, **ipsec_kw)
    with s:
        cli.initiate("net", "rw")
        cli.wait_child_up("net")
        _tunnel_traffic(cli)
        cli.terminate(ike="rw")
        srv.wait_no_sas()


def cap_ikev2_libipsec_default(outdir):
    """IKEv2 without encap=yes: kernel-libipsec fakes NAT-D anyway, so IKE floats to 4500 at
    IKE_AUTH just the same; 3 pings as ESP-in-UDP; DELETE."""
    _sa_pings_delete("ikev2_libipsec_default", outdir, 2)


def cap_ikev2_plain_udp500(outdir):
    """IKEv2 on UDP 500 only: charon without kernel-libipsec (honest NAT-D) and mobike = no, so
    no float to 4500; childless IKE_SA (no kernel ESP here, so no CHILD_SA), DPD INFORMATIONAL, then DELETE."""
    s, srv, cli = _ipsec("ikev2_plain_udp500", outdir, 2, libipsec=False,
                         client_kw={"childless": "force", "dpd_delay": "1s", "mobike": False})
    with s:
        cli.initiate(ike="rw")
        sa = cli.wait_ike_up("rw")
        assert sa["remote-port"] == "500", sa
        mark = len(cli.log_text())
        cli.wait_log(r"sending DPD request", 10, start=mark)
        cli.wait_log(r"parsed INFORMATIONAL response", 10, start=mark)
        cli.terminate(ike="rw")
        srv.wait_no_sas()


def cap_ikev2_dpd_rekey_delete(outdir):
    """IKEv2 (libipsec): CHILD_SA up, DPD (empty INFORMATIONAL), CREATE_CHILD_SA rekey of the
    CHILD_SA and of the IKE_SA, INFORMATIONAL DELETE of the CHILD_SA, then of the IKE_SA."""
    s, srv, cli = _ipsec("ikev2_dpd_rekey_delete", outdir, 2, client_kw={"dpd_delay": "1s"})
    with s:
        cli.initiate("net", "rw")
        cli.wait_child_up("net")
        cli.wait_log(r"sending DPD request", 10)
        cli.wait_log(r"parsed INFORMATIONAL response", 10)
        mark = len(cli.log_text())
        cli.swanctl("--rekey", "--child", "net")
        cli.wait_log(r"parsed CREATE_CHILD_SA response", 10, start=mark)
        mark = len(cli.log_text())
        cli.swanctl("--rekey", "--ike", "rw")
        cli.wait_log(r"parsed CREATE_CHILD_SA response", 10, start=mark)
        cli.wait_child_up("net")
        _tunnel_traffic(cli, 1)
        cli.terminate(child="net")
        P.wait_for(lambda: not cli.children("net"), 10, what="CHILD_SA gone")
        cli.terminate(ike="rw")
        srv.wait_no_sas()


def cap_ikev1_main_quick(outdir):
    """IKEv1 main mode (PSK) on 500, floats to 4500 at MM5 (libipsec fake NAT-D), Mode Config
    TRANSACTION (virtual IP), quick mode, 3 pings as ESP-in-UDP, ISAKMP INFORMATIONAL DELETEs."""
    _sa_pings_delete("ikev1_main_quick", outdir, 1)


def cap_ikev1_natt_keepalive(outdir):
    """IKEv1 main + quick mode, client behind NAPT (500->35500, 4500->34500): 3 pings as
    ESP-in-UDP, NAT-T keepalives (keep_alive = 2s), DELETEs."""
    _natt_keepalive("ikev1_natt_keepalive", outdir, 1)


def cap_ikev1_aggressive(outdir):
    """IKEv1 aggressive mode (PSK), Mode Config, quick mode, 1 ping, DELETE."""
    s, srv, cli = _ipsec("ikev1_aggressive", outdir, 1, client_kw={"aggressive": True},
                         server_kw={"aggressive": True}, extra_conf=P.AGGRESSIVE_PSK_CONF)
    with s:
        cli.initiate("net", "rw")
        cli.wait_child_up("net")
        _tunnel_traffic(cli, 1)
        cli.terminate(ike="rw")
        srv.wait_no_sas()


def cap_l2tp_control(outdir):
    """xl2tpd LAC -> LNS: SCCRQ, SCCRP, SCCCN, ICRQ, ZLB, ICRP, ICCN, ZLB; the LNS's real pppd
    fails (no /dev/ppp) -> CDN from the LNS + ZLB (the LAC runs the pppd stub, so only one CDN);
    HELLO from both sides after 60 s idle + ZLB acks; then StopCCN (LAC 'd') + ZLB."""
    with Setup("l2tp_control", outdir, "udp port 1701") as s:
        lns = s.add(P.Xl2tpd(s.pair.server, None, "lns", role="lns", listen_addr=s.pair.SERVER_IP,
                             pppd="real"))
        lac = s.add(P.Xl2tpd(s.pair.client, None, "lac", role="lac", lns_addr=s.pair.SERVER_IP,
                             ppp_interval=None))
        lac.tunnel_up()
        lns.tunnel_up()
        l2tp_settled(s)
        lac.wait_log(P.L2TP_HELLO_RE, 75)
        lns.wait_log(P.L2TP_HELLO_RE, 75)
        wait_acked(s.path, 6, s.pair.CLIENT_IP)
        wait_acked(s.path, 6, s.pair.SERVER_IP)
        mark = len(lns.log_text())
        lac.disconnect()
        lns.wait_log(r"Stop-Control-Connection-Notification", 10, start=mark)
        wait_acked(s.path, 4, s.pair.CLIENT_IP)


def _l2tp_data(name, outdir, lns_port=1701):
    bpf = "udp port 1701" + (" or udp port %d" % lns_port if lns_port != 1701 else "")
    with Setup(name, outdir, bpf) as s:
        if lns_port != 1701:
            P.lns_port_rewrite(s.pair.server, lns_port)
        lns = s.add(P.Xl2tpd(s.pair.server, None, "lns", role="lns", listen_addr=s.pair.SERVER_IP,
                             port=lns_port, ppp_interval=0.5))
        lac = s.add(P.Xl2tpd(s.pair.client, None, "lac", role="lac", lns_addr=s.pair.SERVER_IP,
                             ppp_interval=0.5))
        t = lac.tunnel_up()
        assert t["port"] == 1701, t
        lns.tunnel_up()
        lac.call_up()
        lns.call_up()
        lac.wait_ppp_rx(3)
        lns.wait_ppp_rx(3)
        mark = len(lns.log_text())
        lac.disconnect()
        lns.wait_log(r"Stop-Control-Connection-Notification", 10, start=mark)
        wait_acked(s.path, 4, s.pair.CLIENT_IP)


def cap_l2tp_data(outdir):
    """xl2tpd LAC -> LNS with the pppd stub on both sides: tunnel + call set-up, then L2TP data
    messages (T=0, PPP LCP Configure-Request every 0.5 s) both ways, then StopCCN + ZLB."""
    _l2tp_data("l2tp_data", outdir)


def cap_l2tp_lns_port1702(outdir):
    """RFC 2661 8.1: LAC sends SCCRQ to 1701, the LNS (xl2tpd bound to 1702, plus a stateless
    dport rewrite 1701->1702 in the server namespace) answers from port 1702; the LAC accepts it
    and keeps sending to 1701. Call, L2TP data both ways (pppd stubs), StopCCN + ZLB."""
    _l2tp_data("l2tp_lns_port1702", outdir, 1702)


CAPTURES = [(n[4:], f) for n, f in sorted(globals().items()) if n.startswith("cap_")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="captures to make (default: all)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for n, f in CAPTURES:
            print("%-26s %s" % (n, " ".join(f.__doc__.split())))
        return 0
    os.makedirs(a.out, exist_ok=True)
    todo = [(n, f) for n, f in CAPTURES if not a.names or n in a.names]
    unknown = set(a.names) - set(n for n, _ in CAPTURES)
    if unknown:
        ap.error("unknown capture(s): %s" % ", ".join(sorted(unknown)))
    for n, f in todo:
        t = time.monotonic()
        for attempt in range(3):
            try:
                f(a.out)
                break
            except Retry as e:
                print("%s: %s, again" % (n, e))
        else:
            raise SystemExit("%s: gave up after 3 attempts" % n)
        path = os.path.join(a.out, n + ".pcap")
        print("%-26s %6d bytes %3d UDP packets  %.1fs" % (n, os.path.getsize(path), len(pcap_udp(path)),
                                                         time.monotonic() - t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
