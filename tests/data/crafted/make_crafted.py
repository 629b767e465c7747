#!/usr/bin/env python3
"""Write the crafted captures in this directory: every IKE exchange, ESP flavour and L2TP message
type the parsers know, plus the link-layer / file formats the pcap reader supports.

    python3 tests/data/crafted/make_crafted.py        # rewrites *.pcap / *.pcapng here

scapy builds IP/UDP/ESP and the IKE messages it has classes for; the payload chains it lacks
(IKEv1 NAT-D, L2TP AVPs) are packed by hand. Deterministic: fixed SPIs, ids and timestamps.
tests/test_tshark_oracle.py checks these files frame by frame against tshark.
"""
import os
import struct
import sys

from scapy.all import IP, UDP, Ether, Raw
from scapy.contrib import ikev2 as v2
from scapy.layers import isakmp as v1
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import Dot1Q

HERE = os.path.dirname(os.path.abspath(__file__))
C4, S4 = "198.51.100.10", "203.0.113.1"
C6, S6 = "2001:db8::10", "2001:db8::1"
T0 = 1700000000

SPI_I = bytes.fromhex("a1a2a3a4a5a6a7a8")
SPI_R = bytes.fromhex("b1b2b3b4b5b6b7b8")
NATD1 = bytes(range(1, 21))
NATD2 = bytes(range(101, 121))
VID_RFC3947 = bytes.fromhex("4a131c81070358455c5728f20e95452f")
VID_DRAFT02 = bytes.fromhex("90cb80913ebb696e086381b5ec427b1f")
VID_DPD = bytes.fromhex("afcad71368a1f1c96b8696fc77570100")


# -- writers -------------------------------------------------------------------------------------

def write_pcap(name, frames, linktype=1, endian="<", nsec=False):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for i, frame in enumerate(frames):
        sec, frac = T0 + i, (i * 1000 + 7) * (1000 if nsec else 1)
        out.append(struct.pack(endian + "IIII", sec, frac, len(frame), len(frame)) + frame)
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(b"".join(out))


def _block(e, btype, body):
    body += b"\x00" * ((4 - len(body) % 4) % 4)
    return struct.pack(e + "II", btype, 12 + len(body)) + body + struct.pack(e + "I", 12 + len(body))


def write_pcapng(name, frames_by_iface, linktypes, endian="<"):
    """frames_by_iface: [(iface, frame)]; interface 1 (if any) gets nanosecond resolution."""
    e = endian
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for i, lt in enumerate(linktypes):
        opts = b""
        if i == 1:
            opts = struct.pack(e + "HHB3x", 9, 1, 9) + struct.pack(e + "HH", 0, 0)
        out.append(_block(e, 1, struct.pack(e + "HHI", lt, 0, 0) + opts))
    for n, (iface, frame) in enumerate(frames_by_iface):
        units = (T0 + n) * (10 ** 9 if iface == 1 else 10 ** 6) + n * 1000
        out.append(_block(e, 6, struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF,
                                            len(frame), len(frame)) + frame))
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(b"".join(out))


def eth(pkt):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / pkt)


# -- IKE -----------------------------------------------------------------------------------------

def chain(items):
    """[(type, body)] -> (first type, generic payload chain)."""
    out = b""
    for i, (ptype, body) in enumerate(items):
        nxt = items[i + 1][0] if i + 1 < len(items) else 0
        out += struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
    return (items[0][0] if items else 0), out


def v1_msg(xtype, items, flags=0, msgid=0, spi_r=SPI_R):
    nxt, body = chain(items)
    return bytes(v1.ISAKMP(init_cookie=SPI_I, resp_cookie=spi_r, next_payload=nxt, exch_type=xtype,
                           flags=flags, id=msgid, length=28 + len(body))) + body


def v1_sa():
    sa = v1.ISAKMP_payload_SA(prop=v1.ISAKMP_payload_Proposal(
        trans=v1.ISAKMP_payload_Transform(transforms=[("Encryption", "AES-CBC"), ("Hash", "SHA"),
                                                      ("Authentication", "PSK"),
                                                      ("GroupDesc", "2048MODPgr"),
                                                      ("LifeType", "Seconds"), ("LifeDuration", 28800)])))
    return bytes(sa)[4:]


def v1_encrypted(xtype, first, msgid=0, n=64):
    """E flag set: the next-payload field names the first payload, all after the header is ciphertext."""
    body = b"\x5a" * n
    return bytes(v1.ISAKMP(init_cookie=SPI_I, resp_cookie=SPI_R, next_payload=first, exch_type=xtype,
                           flags=1, id=msgid, length=28 + n)) + body


def v1_notify(ntype, data=b"", spi=b""):
    return (11, struct.pack("!IBBH", 1, 1, len(spi), ntype) + spi + data)


def ikev1_messages():
    return [
        # Main Mode
        (500, v1_msg(2, [(1, v1_sa()), (13, VID_RFC3947), (13, VID_DRAFT02), (13, VID_DPD)], spi_r=b"\x00" * 8)),
        (500, v1_msg(2, [(1, v1_sa()), (13, VID_RFC3947), (13, VID_DPD)])),
        (500, v1_msg(2, [(4, b"\x11" * 256), (10, b"\x22" * 32), (20, NATD1), (20, NATD2)])),
        (500, v1_msg(2, [(4, b"\x33" * 256), (10, b"\x44" * 32), (130, NATD2), (130, NATD1)])),
        (4500, v1_encrypted(2, 5)),
        (4500, v1_encrypted(2, 5, n=80)),
        # Aggressive Mode
        (500, v1_msg(4, [(1, v1_sa()), (4, b"\x55" * 128), (10, b"\x66" * 16),
                         (5, b"\x02\x11\x01\xf4" + b"client.example"), (13, VID_RFC3947)], spi_r=b"\x00" * 8)),
        (500, v1_msg(4, [(1, v1_sa()), (4, b"\x77" * 128), (10, b"\x88" * 16), (5, b"\x01\x11\x01\xf4" + b"\xcb\x00\x71\x01"),
                         (20, NATD1), (20, NATD2), (8, b"\x99" * 20)])),
        # Quick Mode, New Group Mode, Transaction (encrypted)
        (4500, v1_encrypted(32, 8, 0x1A2B3C4D, 160)),
        (4500, v1_encrypted(32, 8, 0x1A2B3C4D, 144)),
        (4500, v1_encrypted(33, 8, 0x22334455)),
        (4500, v1_encrypted(6, 8, 0x33445566)),
        # Informational in clear: DPD, delete, an error notify
        (500, v1_msg(5, [(8, b"\xaa" * 20), v1_notify(36136, b"\x00\x00\x00\x01", SPI_I + SPI_R)], msgid=0x01020304)),
        (500, v1_msg(5, [(8, b"\xab" * 20), v1_notify(36137, b"\x00\x00\x00\x01", SPI_I + SPI_R)], msgid=0x01020305)),
        (500, v1_msg(5, [(12, struct.pack("!IBBH", 1, 1, 16, 1) + SPI_I + SPI_R)], msgid=0x01020306)),
        (500, v1_msg(5, [v1_notify(14)], spi_r=b"\x00" * 8)),
    ]


def v2_msg(xtype, flags, msgid, payload=None, spi_r=SPI_R):
    hdr = v2.IKEv2(init_SPI=SPI_I, resp_SPI=spi_r, exch_type=xtype, flags=flags, id=msgid)
    return bytes(hdr / payload) if payload is not None else bytes(hdr)


def v2_sa():
    return v2.IKEv2_SA(prop=v2.IKEv2_Proposal(trans=v2.IKEv2_Transform(transform_type="Encryption", transform_id=12) /
                                              v2.IKEv2_Transform(transform_type="PRF", transform_id=5) /
                                              v2.IKEv2_Transform(transform_type="Integrity", transform_id=12) /
                                              v2.IKEv2_Transform(transform_type="GroupDesc", transform_id=14)))


def sk(first, n=80):
    return v2.IKEv2_Encrypted(next_payload=first, load=b"\xc3" * n)


def ikev2_messages():
    init_req = (v2_sa() / v2.IKEv2_KE(group=14, ke=b"\x01" * 256) / v2.IKEv2_Nonce(nonce=b"\x02" * 32) /
                v2.IKEv2_Notify(type=16388, notify=NATD1) / v2.IKEv2_Notify(type=16389, notify=NATD2) /
                v2.IKEv2_Notify(type=16430) / v2.IKEv2_Notify(type=16431, notify=b"\x00\x02\x00\x03") /
                v2.IKEv2_VendorID(vendorID=b"strongSwan"))
    init_resp = (v2_sa() / v2.IKEv2_KE(group=14, ke=b"\x03" * 256) / v2.IKEv2_Nonce(nonce=b"\x04" * 32) /
                 v2.IKEv2_Notify(type=16388, notify=NATD2) / v2.IKEv2_Notify(type=16389, notify=NATD1) /
                 v2.IKEv2_CERTREQ(cert_encoding=4, cert_authority=b"\x05" * 20) / v2.IKEv2_Notify(type=16404))
    return [
        (500, v2_msg(34, "Initiator", 0, init_req, spi_r=b"\x00" * 8)),
        (500, v2_msg(34, "Response", 0, v2.IKEv2_Notify(type=16390, notify=b"\x06" * 16), spi_r=b"\x00" * 8)),
        (500, v2_msg(34, "Initiator", 0, v2.IKEv2_Notify(type=16390, notify=b"\x06" * 16) / init_req, spi_r=b"\x00" * 8)),
        (500, v2_msg(34, "Response", 0, v2.IKEv2_Notify(type=17, notify=b"\x00\x13"), spi_r=b"\x00" * 8)),
        (500, v2_msg(34, "Response", 0, init_resp)),
        (4500, v2_msg(43, "Initiator", 1, sk(38))),
        (4500, v2_msg(43, "Response", 1, sk(38))),
        (4500, v2_msg(35, "Initiator", 2, sk(35, 400))),
        (4500, v2_msg(35, "Initiator", 3, v2.IKEv2_Encrypted_Fragment(next_payload=35, frag_number=1, frag_total=2, load=b"\xc4" * 200))),
        (4500, v2_msg(35, "Response", 3, sk(36, 300))),
        (4500, v2_msg(36, "Initiator", 4, sk(33, 200))),
        (4500, v2_msg(36, "Response", 4, sk(33, 200))),
        (4500, v2_msg(37, "Initiator", 5, sk(0, 32))),
        (4500, v2_msg(37, "Response", 5, sk(0, 32))),
        (500, v2_msg(38, "Initiator", 0, v2.IKEv2_Notify(type=16413, notify=b"\x07" * 40) /
                     v2.IKEv2_Nonce(nonce=b"\x08" * 32), spi_r=b"\x00" * 8)),
        (500, v2_msg(37, "Response", 0, v2.IKEv2_Notify(type=4, notify=b""), spi_r=b"\x00" * 8)),
    ]


def ike_frames():
    frames = []
    for version_msgs in (ikev1_messages(), ikev2_messages()):
        for i, (port, msg) in enumerate(version_msgs):
            forward = i % 2 == 0
            src, dst = (C4, S4) if forward else (S4, C4)
            payload = (b"\x00\x00\x00\x00" + msg) if port == 4500 else msg
            frames.append(eth(IP(src=src, dst=dst, id=i) / UDP(sport=port, dport=port) / Raw(payload)))
    # IPv6, a NATed client port, and IKE on 4500 from a mapped port
    frames.append(eth(IPv6(src=C6, dst=S6) / UDP(sport=500, dport=500) / Raw(ikev2_messages()[0][1])))
    frames.append(eth(IPv6(src=S6, dst=C6) / UDP(sport=4500, dport=4500) / Raw(b"\x00" * 4 + ikev2_messages()[9][1])))
    frames.append(eth(IP(src=S4, dst=C4) / UDP(sport=500, dport=61001) / Raw(ikev1_messages()[1][1])))
    frames.append(eth(IP(src=C4, dst=S4) / UDP(sport=62002, dport=4500) / Raw(b"\x00" * 4 + ikev2_messages()[7][1])))
    return frames


# -- ESP / NAT-T ---------------------------------------------------------------------------------

def esp_frames():
    return [
        eth(IP(src=C4, dst=S4) / ESP(spi=0xC0FFEE01, seq=1, data=b"\x10" * 48)),
        eth(IP(src=S4, dst=C4) / ESP(spi=0x0000BEEF, seq=1, data=b"\x11" * 48)),
        eth(IP(src=C4, dst=S4) / ESP(spi=0xC0FFEE01, seq=0xFFFFFFFF, data=b"\x12" * 64)),
        eth(IP(src=C4, dst=S4) / UDP(sport=4500, dport=4500) / ESP(spi=0xCAFE0001, seq=7, data=b"\x13" * 64)),
        eth(IP(src=S4, dst=C4) / UDP(sport=4500, dport=40123) / ESP(spi=0xCAFE0002, seq=8, data=b"\x14" * 64)),
        eth(IP(src=C4, dst=S4) / UDP(sport=4500, dport=4500) / Raw(b"\xff")),
        eth(IP(src=C4, dst=S4) / UDP(sport=40123, dport=4500) / Raw(b"\xff")),
        eth(IPv6(src=C6, dst=S6) / ESP(spi=0x01000001, seq=3, data=b"\x15" * 32)),
        eth(IPv6(src=C6, dst=S6) / UDP(sport=4500, dport=4500) / ESP(spi=0x01000002, seq=4, data=b"\x16" * 32)),
        eth(IPv6(src=C6, dst=S6) / UDP(sport=4500, dport=4500) / Raw(b"\xff")),
    ]


# -- L2TP ----------------------------------------------------------------------------------------

def avp(atype, value, hidden=False, mandatory=True, vendor=0):
    flags = (0x8000 if mandatory else 0) | (0x4000 if hidden else 0)
    return struct.pack("!HHH", flags | (6 + len(value)), vendor, atype) + value


def u16(v):
    return struct.pack("!H", v)


def u32(v):
    return struct.pack("!I", v)


def l2tp_v2(tunnel, session, ns, nr, avps):
    return struct.pack("!HHHHHH", 0xC802, 12 + len(avps), tunnel, session, ns, nr) + avps


def l2tp_v3(ccid, ns, nr, avps):
    return struct.pack("!HHIHH", 0xC803, 12 + len(avps), ccid, ns, nr) + avps


def l2tp_v2_messages():
    T_C, T_S, S_C, S_S = 0x1111, 0x2222, 0x0033, 0x0044  # client/server tunnel and session ids
    mt = lambda n: avp(0, u16(n))  # noqa: E731
    result = avp(1, u16(1) + u16(0))
    return [
        (True, l2tp_v2(0, 0, 0, 0, mt(1) + avp(2, u16(0x0100)) + avp(3, u32(3)) + avp(4, u32(0), mandatory=False) +
                       avp(7, b"client") + avp(8, b"xelerance", mandatory=False) + avp(9, u16(T_C)) + avp(10, u16(4)))),
        (False, l2tp_v2(T_C, 0, 0, 1, mt(2) + avp(2, u16(0x0100)) + avp(3, u32(3)) + avp(7, b"server") +
                        avp(9, u16(T_S)) + avp(10, u16(4)))),
        (True, l2tp_v2(T_S, 0, 1, 1, mt(3))),
        (False, l2tp_v2(T_C, 0, 1, 2, b"")),  # ZLB ack
        (True, l2tp_v2(T_S, 0, 2, 1, mt(10) + avp(14, u16(S_C)) + avp(15, u32(1)))),
        (False, l2tp_v2(T_C, S_C, 1, 3, mt(11) + avp(14, u16(S_S)))),
        (True, l2tp_v2(T_S, S_S, 3, 2, mt(12) + avp(24, u32(100000000)) + avp(19, u32(1)))),
        (True, l2tp_v2(T_S, 0, 4, 2, mt(7) + avp(14, u16(S_C + 1)) + avp(15, u32(2)) + avp(16, u32(9600)) +
                       avp(17, u32(100000)) + avp(18, u32(1)) + avp(19, u32(1)) + avp(21, b"5551234"))),
        (False, l2tp_v2(T_C, 0, 2, 5, mt(8) + avp(14, u16(S_S + 1)))),
        (False, l2tp_v2(T_C, S_C + 1, 3, 5, mt(9) + avp(24, u32(9600)) + avp(19, u32(1)))),
        (True, l2tp_v2(T_S, S_S, 5, 4, mt(15) + avp(34, u16(0) + u32(1) + u32(2) + u32(3) + u32(4) + u32(5) + u32(6)))),
        (True, l2tp_v2(T_S, S_S, 6, 4, mt(16) + avp(35, u16(0) + u32(0xFFFFFFFF) + u32(0xFFFFFFFF)))),
        (True, l2tp_v2(T_S, S_S, 7, 4, mt(14) + result + avp(14, u16(S_C)))),
        (True, l2tp_v2(T_S, 0, 8, 4, mt(6))),
        (True, l2tp_v2(T_S, 0, 9, 4, mt(4) + avp(9, u16(T_C)) + result)),
        # hidden Assigned Tunnel ID (a Random Vector AVP comes first)
        (True, l2tp_v2(0, 0, 0, 0, mt(1) + avp(2, u16(0x0100)) + avp(7, b"hidden") + avp(36, b"\x42" * 16) +
                       avp(9, b"\x9a\x3c\x55\x01\x02\x03", hidden=True) + avp(10, u16(4)))),
    ]


def l2tp_frames():
    frames = []
    for i, (forward, msg) in enumerate(l2tp_v2_messages()):
        src, dst = (C4, S4) if forward else (S4, C4)
        frames.append(eth(IP(src=src, dst=dst, id=i) / UDP(sport=1701, dport=1701) / Raw(msg)))
    # the LNS answering from another port (RFC 2661 8.1)
    frames.append(eth(IP(src=S4, dst=C4) / UDP(sport=40000, dport=1701) / Raw(l2tp_v2_messages()[1][1])))
    # data: PPP LCP over plain header, and with L, S and O bits
    frames.append(eth(IP(src=C4, dst=S4) / UDP(sport=1701, dport=1701) /
                      Raw(struct.pack("!HHH", 0x0002, 0x2222, 0x0044) + b"\xff\x03\xc0\x21\x01\x01\x00\x04")))
    frames.append(eth(IP(src=S4, dst=C4) / UDP(sport=1701, dport=1701) /
                      Raw(struct.pack("!HHHHHHH", 0x4A02, 24, 0x1111, 0x0033, 5, 6, 2) + b"\x00\x00" +
                          b"\xff\x03\xc0\x21\x01\x02\x00\x04")))
    frames.append(eth(IPv6(src=C6, dst=S6) / UDP(sport=1701, dport=1701) / Raw(l2tp_v2_messages()[0][1])))
    return frames


def l2tpv3_frames():
    mt = lambda n: avp(0, u16(n))  # noqa: E731
    ccid_c, ccid_s = 0x0A0B0C0D, 0x01020304
    udp_msgs = [
        (True, l2tp_v3(0, 0, 0, mt(1) + avp(7, b"lac3") + avp(61, u32(ccid_c)) + avp(10, u16(8)))),
        (False, l2tp_v3(ccid_c, 0, 1, mt(2) + avp(7, b"lns3") + avp(61, u32(ccid_s)))),
        (True, l2tp_v3(ccid_s, 1, 1, mt(3))),
        (False, l2tp_v3(ccid_c, 1, 2, b"")),
        (True, l2tp_v3(ccid_s, 2, 1, mt(10) + avp(63, u32(0x00ABCDEF)) + avp(64, u32(0)) + avp(68, u16(5)))),
        (False, l2tp_v3(ccid_c, 1, 3, mt(11) + avp(63, u32(0x00FEDCBA)) + avp(64, u32(0x00ABCDEF)))),
        (True, l2tp_v3(ccid_s, 3, 2, mt(20))),
        (True, l2tp_v3(ccid_s, 4, 2, mt(6))),
    ]
    for n in range(17, 30):  # the message types after RFC 2661, one of each
        udp_msgs.append((True, l2tp_v3(ccid_s, n - 12, 2, mt(n))))
    frames = []
    for forward, msg in udp_msgs:
        src, dst = (C4, S4) if forward else (S4, C4)
        frames.append(eth(IP(src=src, dst=dst) / UDP(sport=1701, dport=1701) / Raw(msg)))
    frames.append(eth(IP(src=C4, dst=S4) / UDP(sport=1701, dport=1701) /
                      Raw(struct.pack("!HHI", 0x0003, 0, 0x00FEDCBA) + b"\x00" * 14 + b"\x08\x00")))
    for forward, msg in udp_msgs[:6]:
        src, dst = (C4, S4) if forward else (S4, C4)
        frames.append(eth(IP(src=src, dst=dst, proto=115) / Raw(b"\x00\x00\x00\x00" + msg)))
    frames.append(eth(IPv6(src=C6, dst=S6, nh=115) / Raw(b"\x00\x00\x00\x00" + udp_msgs[0][1])))
    return frames


# -- link layers and file formats ----------------------------------------------------------------

def linktype_samples():
    return [
        bytes(IP(src=C4, dst=S4) / UDP(sport=500, dport=500) / Raw(ikev2_messages()[0][1])),
        bytes(IP(src=C4, dst=S4) / UDP(sport=4500, dport=4500) / ESP(spi=0xCAFE0003, seq=9, data=b"\x17" * 32)),
        bytes(IPv6(src=C6, dst=S6) / UDP(sport=1701, dport=1701) / Raw(l2tp_v2_messages()[4][1])),
        bytes(IP(src=S4, dst=C4) / ESP(spi=0xCAFE0004, seq=10, data=b"\x18" * 32)),
    ]


def main():
    os.chdir(HERE)
    write_pcap("ike.pcap", ike_frames())
    write_pcap("esp_natt.pcap", esp_frames())
    write_pcap("l2tpv2.pcap", l2tp_frames())
    write_pcap("l2tpv3.pcap", l2tpv3_frames())
    ips = linktype_samples()
    write_pcap("raw101_be_nsec.pcap", ips, linktype=101, endian=">", nsec=True)
    write_pcap("ipv4_228.pcap", [p for p in ips if p[0] >> 4 == 4], linktype=228)
    write_pcap("ipv6_229.pcap", [p for p in ips if p[0] >> 4 == 6], linktype=229)
    sll = [struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00",
                       0x86DD if p[0] >> 4 == 6 else 0x0800) + p for p in ips]
    write_pcap("sll.pcap", sll, linktype=113)
    sll2 = [struct.pack("!HHIHBB8s", 0x86DD if p[0] >> 4 == 6 else 0x0800, 0, 2, 1, 4, 6,
                        b"\x02\x00\x00\x00\x00\x01\x00\x00") + p for p in ips]
    write_pcap("sll2.pcap", sll2, linktype=276)
    null = [struct.pack("<I", 24 if p[0] >> 4 == 6 else 2) + p for p in ips]
    write_pcap("null_loopback.pcap", null, linktype=0)
    vlan = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / Raw(p))
            for p in ips]
    vlan = [v[:12] + b"\x81\x00\x00\x07" + (b"\x86\xdd" if p[0] >> 4 == 6 else b"\x08\x00") + p
            for v, p in zip(vlan, ips)]
    pppoe = [b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x88\x64" +
             struct.pack("!BBHH", 0x11, 0, 0x0042, len(p) + 2) + (b"\x00\x57" if p[0] >> 4 == 6 else b"\x00\x21") + p
             for p in ips]
    write_pcap("vlan_pppoe.pcap", vlan + pppoe)
    eth_frames = [eth(Raw(b""))[:12] + (b"\x86\xdd" if p[0] >> 4 == 6 else b"\x08\x00") + p for p in ips]
    write_pcapng("two_interfaces.pcapng", [(0, eth_frames[0]), (1, ips[1]), (0, eth_frames[2]), (1, ips[3])],
                 [1, 101])
    write_pcapng("big_endian.pcapng", [(0, f) for f in eth_frames], [1], endian=">")
    print("wrote crafted captures to %s" % HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
