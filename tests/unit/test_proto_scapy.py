"""decode_ip() against scapy's own dissectors (isakmp, contrib.ikev2, ipsec, l2tp, inet6).

scapy is an oracle here only; the parsers themselves never import it.
"""
import struct

import pytest

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, Raw, fragment  # noqa: E402
from scapy.contrib import ikev2 as v2  # noqa: E402
from scapy.layers import isakmp as v1  # noqa: E402
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,  # noqa: E402
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import ESP  # noqa: E402
from scapy.layers.l2tp import L2TP  # noqa: E402

from passthrough.proto.decode import decode_ip  # noqa: E402

V1_NAMES = {"SA": 1, "KE": 4, "NONCE": 10, "VID": 13, "HASH": 8, "N": 11, "D": 12, "ID": 5}


def v1_payload_types(pkt):
    """Payload type numbers in scapy's view of an ISAKMP message."""
    out = []
    layer = pkt[v1.ISAKMP]
    nxt = layer.next_payload
    layer = layer.payload
    while nxt and layer is not None and not isinstance(layer, scapy_all.NoPayload):
        out.append(nxt)
        nxt = getattr(layer, "next_payload", 0)
        layer = layer.payload
    return out


@pytest.mark.parametrize("xtype", sorted(v1.ISAKMP_exchange_type))
def test_ikev1_header_vs_scapy(xtype):
    msg = (v1.ISAKMP(init_cookie=b"\x01\x02\x03\x04\x05\x06\x07\x08", resp_cookie=b"\xaa" * 8,
                     exch_type=xtype, id=0x01020304) /
           v1.ISAKMP_payload_SA(prop=v1.ISAKMP_payload_Proposal()) /
           v1.ISAKMP_payload_KE(ke=b"k" * 64) / v1.ISAKMP_payload_Nonce(nonce=b"n" * 16) /
           v1.ISAKMP_payload_VendorID(VendorID=bytes.fromhex("4a131c81070358455c5728f20e95452f")))
    raw = bytes(IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=500, dport=500) / msg)
    ref = IP(raw)[v1.ISAKMP]
    d = decode_ip(raw)
    assert d["error"] is None
    assert d["ike_version"] == 1
    assert d["ike_spi_i"] == bytes(ref.init_cookie).hex()
    assert d["ike_spi_r"] == bytes(ref.resp_cookie).hex()
    assert d["ike_exchange_type"] == ref.exch_type == xtype
    assert d["ike_msgid"] == ref.id
    assert d["ike_length"] == ref.length == len(bytes(msg))
    assert [V1_NAMES[n] for n in d["ike_payloads"]] == v1_payload_types(IP(raw))
    assert d["ike_vendor_ids"] == ["4a131c81070358455c5728f20e95452f"]


def test_ikev1_encrypted_vs_scapy_flag():
    msg = v1.ISAKMP(init_cookie=b"i" * 8, resp_cookie=b"r" * 8, exch_type=32, flags="encryption",
                    next_payload=8, id=77) / Raw(b"\x00" * 48)
    raw = bytes(IP() / UDP(sport=500, dport=500) / msg)
    ref = IP(raw)[v1.ISAKMP]
    d = decode_ip(raw)
    assert ref.flags.encryption and d["ike_flags"] & 1
    assert d["error"] is None and d["ike_payloads"] == ["encrypted"] and d["ike_msgid"] == 77


@pytest.mark.parametrize("xtype,flags", [(34, "Initiator"), (34, "Response"), (35, "Initiator"),
                                         (36, "Response"), (37, "Initiator+Response"),
                                         (43, "Initiator")])
@pytest.mark.parametrize("natt", [False, True])
def test_ikev2_vs_scapy(xtype, flags, natt):
    msg = (v2.IKEv2(init_SPI=b"\x11\x22\x33\x44\x55\x66\x77\x88", resp_SPI=b"\x99" * 8,
                    exch_type=xtype, flags=flags, id=3) /
           v2.IKEv2_SA(prop=v2.IKEv2_Proposal()) / v2.IKEv2_KE(group=14, ke=b"k" * 256) /
           v2.IKEv2_Nonce(nonce=b"n" * 32) /
           v2.IKEv2_Notify(type=16388, notify=b"\x01" * 20) /
           v2.IKEv2_Notify(type=16389, notify=b"\x02" * 20) /
           v2.IKEv2_VendorID(vendorID=b"strongSwan"))
    if natt:
        l4 = UDP(sport=4500, dport=4500) / Raw(b"\x00\x00\x00\x00") / Raw(bytes(msg))
    else:
        l4 = UDP(sport=500, dport=500) / msg
    raw = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / l4)
    ref = v2.IKEv2(bytes(msg))
    d = decode_ip(raw)
    assert d["error"] is None
    assert d["ike_version"] == 2 and d["ike_natt"] is natt
    assert d["ike_spi_i"] == bytes(ref.init_SPI).hex() and d["ike_spi_r"] == bytes(ref.resp_SPI).hex()
    assert d["ike_exchange_type"] == ref.exch_type
    assert d["ike_exchange"] == v2.IKEv2ExchangeTypes[ref.exch_type]
    assert d["ike_initiator"] == bool(ref.flags.Initiator)
    assert d["ike_response"] == bool(ref.flags.Response)
    assert d["ike_msgid"] == ref.id
    assert d["ike_payloads"] == ["SA", "KE", "Nonce", "N", "N", "V"]
    assert d["ike_nat_d"] == ["01" * 20, "02" * 20]
    assert d["ike_vendor_ids"] == [b"strongSwan".hex()]


def test_ikev2_encrypted_vs_scapy():
    msg = v2.IKEv2(init_SPI=b"a" * 8, resp_SPI=b"b" * 8, exch_type=35, flags="Initiator", id=1) / \
        v2.IKEv2_Encrypted(next_payload=35, load=b"\x00" * 80)
    d = decode_ip(bytes(IP() / UDP(sport=4500, dport=4500) / Raw(b"\x00" * 4 + bytes(msg))))
    assert d["error"] is None and d["ike_payloads"] == ["SK"] and d["ike_exchange"] == "IKE_AUTH"


@pytest.mark.parametrize("udp", [False, True])
def test_esp_vs_scapy(udp):
    esp = ESP(spi=0xC0DE0001, seq=123456, data=b"\xee" * 40)
    pkt = IP(src="10.1.1.1", dst="10.2.2.2") / (UDP(sport=4500, dport=4500) / esp if udp else esp)
    raw = bytes(pkt)
    ref = IP(raw)[ESP]
    d = decode_ip(raw)
    assert d["error"] is None and d["proto"] == "esp" and d["esp_udp"] is udp
    assert int(d["esp_spi"], 16) == ref.spi and d["esp_seq"] == ref.seq


def test_l2tp_header_vs_scapy():
    avps = struct.pack("!HHHH", 0x8008, 0, 0, 6)  # HELLO
    hdr = L2TP(hdr="control+length+sequence", tunnel_id=4660, session_id=0, ns=9, nr=8)
    raw = bytes(IP() / UDP(sport=1701, dport=1701) / hdr / Raw(avps))
    ref = IP(raw)[L2TP]
    d = decode_ip(raw)
    assert d["error"] is None and d["l2tp_type"] == "HELLO"
    assert d["l2tp_tunnel"] == ref.tunnel_id and d["l2tp_session"] == ref.session_id
    assert d["l2tp_ns"] == ref.ns and d["l2tp_nr"] == ref.nr
    data = bytes(IP() / UDP(sport=1701, dport=1701) / L2TP(tunnel_id=3, session_id=4) / Raw(b"\xff\x03"))
    d = decode_ip(data)
    assert d["l2tp_type"] == "data" and (d["l2tp_tunnel"], d["l2tp_session"]) == (3, 4)


def test_ipv6_extension_walk_vs_scapy():
    pkt = (IPv6(src="2001:db8::a", dst="2001:db8::b") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() /
           IPv6ExtHdrRouting(addresses=["2001:db8::c"]) / IPv6ExtHdrFragment(m=0, offset=0) /
           UDP(sport=500, dport=500) / v2.IKEv2(init_SPI=b"s" * 8, exch_type=34, flags="Initiator"))
    d = decode_ip(bytes(pkt))
    assert d["error"] is None and d["ip6_ext"] == [0, 60, 43, 44]
    assert d["src"] == "2001:db8::a" and d["proto"] == "ike" and d["ike_spi_i"] == (b"s" * 8).hex()


def test_ipv4_fragments_vs_scapy():
    msg = v2.IKEv2(init_SPI=b"f" * 8, exch_type=35, flags="Initiator", id=1) / \
        v2.IKEv2_Encrypted(load=b"\x00" * 3000)
    frags = fragment(IP(src="192.0.2.5", dst="192.0.2.6") / UDP(sport=4500, dport=4500) /
                     Raw(b"\x00" * 4 + bytes(msg)), fragsize=1400)
    assert len(frags) == 3
    first = decode_ip(bytes(frags[0]))
    assert first["frag"] is True and first["frag_offset"] == 0 and first["error"] is None
    assert first["proto"] == "ike" and first["ike_exchange"] == "IKE_AUTH"
    assert first["ike_spi_i"] == (b"f" * 8).hex() and first["ike_payloads"] == ["SK"]
    for f in frags[1:]:
        d = decode_ip(bytes(f))
        assert d["frag"] is True and d["frag_offset"] == f.frag * 8 and d["error"] is None
        assert d["sport"] is None and d["proto"] == "other"
