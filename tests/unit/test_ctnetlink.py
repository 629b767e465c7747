"""ctnetlink messages (nat/ctnetlink.py) built and parsed without a kernel; tests/lab/test_offload.py
uses them against real conntrack (lookups, timeout refresh)."""
import socket
import struct

from nat import ctnetlink as C


def header(msg):
    return struct.unpack_from("=IHHII", msg, 0)


def test_get_by_reply_tuple_in_a_zone():
    msg = C.get_msg(17, ("192.168.1.10", "203.0.113.3", 1701, 1702), 4107, seq=9, reply=True)
    mlen, mtype, flags, seq, _ = header(msg)
    assert mlen == len(msg) and mtype == (1 << 8) | C.IPCTNL_MSG_CT_GET and seq == 9
    assert flags == C.NLM_F_REQUEST | C.NLM_F_ACK  # no dump: one entry or ENOENT
    a = C._attrs(msg, 16 + 4, len(msg))
    assert set(a) == {C.CTA_TUPLE_REPLY, C.CTA_ZONE}
    assert struct.unpack_from("!H", msg, a[C.CTA_ZONE][0])[0] == 4107
    assert C._parse_tuple(msg, a[C.CTA_TUPLE_REPLY]) == ("192.168.1.10", "203.0.113.3", 1701, 1702)


def test_timeout_refresh_has_no_create_flag():
    msg = C.set_timeout_msg(50, ("192.168.1.10", "203.0.113.2", 0, 0), 4108, 180, seq=1)
    _, mtype, flags, _, _ = header(msg)
    assert mtype == (1 << 8) | C.IPCTNL_MSG_CT_NEW and not flags & 0x400  # NLM_F_CREATE: never make one
    a = C._attrs(msg, 20, len(msg))
    assert struct.unpack_from("!I", msg, a[C.CTA_TIMEOUT][0])[0] == 180
    assert C._parse_tuple(msg, a[C.CTA_TUPLE_ORIG]) == ("192.168.1.10", "203.0.113.2", 0, 0)  # ESP: no ports


def entry(status, with_reply=True):
    body = struct.pack("!BBH", socket.AF_INET, 0, 0)
    body += C._tuple(C.CTA_TUPLE_ORIG, 17, ("192.168.1.10", "203.0.113.2", 4500, 4500))
    if with_reply:
        body += C._tuple(C.CTA_TUPLE_REPLY, 17, ("203.0.113.2", "203.0.113.1", 4500, 1024))
    body += C._attr(C.CTA_STATUS, struct.pack("!I", status))
    return body


def test_entry_parses_like_a_conntrack_line():
    b = entry(C.IPS_SEEN_REPLY | 1)
    assert C.parse_entry(b, 0, len(b), 4107) == {
        "zone": 4107, "proto": 17, "orig": ("192.168.1.10", "203.0.113.2", 4500, 4500),
        "reply": ("203.0.113.2", "203.0.113.1", 4500, 1024), "replied": True}
    b = entry(0)
    assert C.parse_entry(b, 0, len(b), 4107)["replied"] is False
    b = entry(0, with_reply=False)
    assert C.parse_entry(b, 0, len(b), 4107) is None


def test_truncated_attributes_do_not_overrun():
    b = entry(C.IPS_SEEN_REPLY)
    assert C._attrs(b, 4, len(b) - 3)  # the last attribute cut: the ones before it survive
    assert C._attrs(b"\x02\x00\x01\x00", 0, 4) == {}  # length < 4


def test_dump_asks_for_the_whole_table_and_delete_copies_the_dumped_tuple():
    mlen, mtype, flags, seq, _ = header(C.dump_msg(3))
    assert mtype == (1 << 8) | C.IPCTNL_MSG_CT_GET and flags == C.NLM_F_REQUEST | C.NLM_F_DUMP and seq == 3
    assert mlen == 20  # no filter attributes: every zone
    body = entry(C.IPS_SEEN_REPLY) + C._attr(C.CTA_ZONE, struct.pack("!H", 4109))
    assert C.parse_entry(body, 0, len(body))["zone"] == 4109  # the entry's own zone
    assert C.parse_entry(entry(0), 0, len(entry(0)))["zone"] == 0  # no CTA_ZONE: zone 0
    s, e = C._attrs(body, 4, len(body))[C.CTA_TUPLE_ORIG]
    msg = C.delete_msg(bytes(body[s - 4:e]), 4109, seq=4)
    _, mtype, flags, _, _ = header(msg)
    assert mtype == (1 << 8) | C.IPCTNL_MSG_CT_DELETE and flags == C.NLM_F_REQUEST | C.NLM_F_ACK
    a = C._attrs(msg, 20, len(msg))
    assert C._parse_tuple(msg, a[C.CTA_TUPLE_ORIG]) == ("192.168.1.10", "203.0.113.2", 4500, 4500)
    assert struct.unpack_from("!H", msg, a[C.CTA_ZONE][0])[0] == 4109


def test_a_family_cut_matches_its_ports_and_protocols_in_our_zones_only():
    from nat.kernel import conntrack_matches

    def e(proto, sport, dport, zone=4107):
        return {"zone": zone, "proto": proto, "orig": ("192.168.1.10", "203.0.113.2", sport, dport)}

    zones = {4107, 4108}
    assert conntrack_matches("l2tp", e(17, 1701, 1701), zones)
    assert conntrack_matches("l2tp", e(17, 40000, 1701), zones)
    assert conntrack_matches("l2tp", e(17, 1701, 1702, zone=0), zones)  # zone 0 too
    assert conntrack_matches("l2tp", e(115, 0, 0), zones)
    assert not conntrack_matches("l2tp", e(17, 1701, 1701, zone=5), zones)  # not one of ours
    assert not conntrack_matches("l2tp", e(17, 4500, 4500), zones)
    assert not conntrack_matches("l2tp", e(6, 1701, 80), zones)  # TCP 1701 is no L2TP
    assert conntrack_matches("ipsec", e(17, 4500, 4500), zones) and conntrack_matches("ipsec", e(50, 0, 0), zones)
    assert conntrack_matches("ipsec", e(51, 0, 0), zones) and not conntrack_matches("ipsec", e(17, 1701, 1701), zones)
    assert conntrack_matches("pptp", e(6, 40000, 1723), zones) and conntrack_matches("pptp", e(47, 0, 0), zones)
    assert not conntrack_matches("pptp", e(17, 40000, 1723), zones)
