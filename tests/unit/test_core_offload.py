# micropython: run
"""The BPF offload plan (pure): map entry layout, conntrack text, translations, refresh decisions.
tests/lab/test_offload.py runs the program itself in a kernel."""
import struct
import sys

from passthrough.config import Config
from passthrough.flows import Flow
from nat import offload as O

CT = """\
udp      17 176 src=192.168.1.10 dst=203.0.113.2 sport=4500 dport=4500 src=203.0.113.2 dst=203.0.113.1 sport=4500 dport=4500 mark=0 zone=4107 use=1
udp      17 29 src=192.168.1.11 dst=203.0.113.2 sport=4500 dport=4500 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=4500 dport=4500 mark=0 zone=4108 use=1
unknown  50 166 src=192.168.1.10 dst=203.0.113.2 src=203.0.113.2 dst=203.0.113.1 mark=0 zone=4107 use=1
udp      17 170 src=203.0.113.3 dst=203.0.113.1 sport=1702 dport=1701 src=192.168.1.10 dst=203.0.113.3 sport=1701 dport=1702 [ASSURED] mark=0 zone=4107 use=1
udp      17 120 src=192.168.1.10 dst=203.0.113.9 sport=4500 dport=4500 src=203.0.113.9 dst=203.0.113.1 sport=4500 dport=1024 zone=4107 use=1
conntrack v1.4.7 (conntrack-tools): 5 flow entries have been shown.
garbage line = = =
"""


def flow(kind, lan, remote, key, lan_port=None, remote_port=None, zone=4107, key_out=None):
    f = Flow(kind, lan, remote, key, 0.0, zone)
    f.lan_port = f.wan_port = lan_port
    f.remote_port = remote_port
    f.key_out = key_out if key_out is not None else (key + 0x100 if key is not None else None)
    return f


def native(fmt):
    return ("<" if sys.byteorder == "little" else ">") + fmt


def test_key_and_value_layout_match_offload_c():
    k = O.pack_key(7, "192.168.1.10", "203.0.113.2", b"\x00\x00\x12\x34", 4500, 4501, 17)
    assert len(k) == O.KEY_SIZE
    assert struct.unpack(native("I"), k[:4])[0] == 7
    assert k[4:8] == bytes([192, 168, 1, 10]) and k[8:12] == bytes([203, 0, 113, 2])
    assert k[12:16] == b"\x00\x00\x12\x34"
    assert k[16:20] == b"\x11\x94\x11\x95" and k[20:21] == b"\x11" and k[21:] == b"\0\0\0"
    v = O.pack_val("203.0.113.1", 4500, False, "l2tp", 9)
    assert len(v) == O.VAL_SIZE
    assert v[:4] == bytes([203, 0, 113, 1]) and v[4:6] == b"\x11\x94" and v[6:8] == b"\x00\x02"
    assert struct.unpack(native("I"), v[8:12])[0] == 9
    assert O.val_counters(v) == (0, 0) and O.val_config(v) == v[:16]
    counted = v[:16] + struct.pack(native("QQ"), 5, 700)
    assert O.val_counters(counted) == (5, 700)


def test_bad_address_is_an_error():
    for bad in ("1.2.3", "1.2.3.256", "a.b.c.d"):
        try:
            O.pack_key(1, bad, "1.2.3.4", b"\0\0\0\0", 0, 0, 50)
        except ValueError:
            continue
        raise AssertionError("accepted %r" % bad)


def test_parse_conntrack_tuples_zone_and_reply_state():
    e = O.parse_conntrack(CT)
    assert len(e) == 5
    assert e[0] == {"zone": 4107, "proto": 17, "timeout": 176, "orig": ("192.168.1.10", "203.0.113.2", 4500, 4500),
                    "reply": ("203.0.113.2", "203.0.113.1", 4500, 4500), "flags": set(), "replied": True,
                    "line": CT.splitlines()[0]}
    assert e[1]["replied"] is False and e[1]["flags"] == {"UNREPLIED"} and e[1]["zone"] == 4108
    assert e[3]["flags"] == {"ASSURED"} and e[3]["replied"]
    assert e[2]["proto"] == 50 and e[2]["orig"] == ("192.168.1.10", "203.0.113.2", 0, 0)
    assert O.parse_conntrack("") == [] and O.parse_conntrack("udp 17\n\x00\n") == []


def test_translation_from_lan_and_from_wan_initiated_entries():
    entries = O.parse_conntrack(CT)
    natt = flow("natt", "192.168.1.10", "203.0.113.2", 0x3001, 4500, 4500)
    t = O.find_translation(O.flow_pair(natt), entries)
    assert t[:2] == ("203.0.113.1", 4500) and t[2] == (17, ("192.168.1.10", "203.0.113.2", 4500, 4500))
    # An LNS answering from 1702 (RFC 2661 8.1): its entry was made by the WAN side.
    lns = flow("l2tp", "192.168.1.10", "203.0.113.3", 111, 1701, 1702)
    t = O.find_translation(O.flow_pair(lns), entries)
    assert t[:2] == ("203.0.113.1", 1701) and t[2][1][0] == "203.0.113.3"
    esp = flow("esp", "192.168.1.10", "203.0.113.2", 0x5001)
    assert O.find_translation(O.flow_pair(esp), entries)[:2] == ("203.0.113.1", 0)
    # NAT moved the port: the entry says so, the entries follow it.
    moved = flow("natt", "192.168.1.10", "203.0.113.9", 0x77, 4500, 4500)
    assert O.find_translation(O.flow_pair(moved), entries)[:2] == ("203.0.113.1", 1024)
    # Unreplied (the firewall has not seen an answer) and other zones: not yet.
    other = flow("natt", "192.168.1.11", "203.0.113.2", 0x4001, 4500, 4500, zone=4108)
    assert O.find_translation(O.flow_pair(other), entries) is None
    wrong_zone = flow("natt", "192.168.1.10", "203.0.113.2", 0x3001, 4500, 4500, zone=4999)
    assert O.find_translation(O.flow_pair(wrong_zone), entries) is None


def test_only_data_flows_with_keys_are_offloadable():
    assert O.flow_pair(flow("ike", "192.168.1.10", "203.0.113.2", 1, 500, 500)) is None
    assert O.flow_pair(flow("natt", "192.168.1.10", "203.0.113.2", None, 4500, 4500)) is None
    no_lns_tid = flow("l2tp", "192.168.1.10", "203.0.113.2", 5, 1701, 1701)
    no_lns_tid.key_out = None  # before SCCRP
    assert O.flow_pair(no_lns_tid) is None
    assert O.flow_pair(flow("l2tp", "192.168.1.10", "203.0.113.2", 5)) is None  # ports unknown
    assert O.flow_pair(flow("esp", "192.168.1.10", "203.0.113.2", 9)) == (4107, 50, "192.168.1.10", 0, "203.0.113.2", 0)


def test_entries_rewrite_source_out_and_destination_in_with_demux_ids():
    f = flow("l2tp", "192.168.1.10", "203.0.113.2", 0x0102, 1701, 1701, key_out=0x0304)
    (ok, ov), (ik, iv) = O.flow_entries(f, "203.0.113.1", 1701, 3, 4)
    assert ok == O.pack_key(3, "192.168.1.10", "203.0.113.2", b"\x03\x04\0\0", 1701, 1701, 17)
    assert ov == O.pack_val("203.0.113.1", 1701, False, "l2tp", 4)
    assert ik == O.pack_key(4, "203.0.113.2", "203.0.113.1", b"\x01\x02\0\0", 1701, 1701, 17)
    assert iv == O.pack_val("192.168.1.10", 1701, True, "l2tp", 3)
    e = flow("esp", "192.168.1.10", "203.0.113.2", 0xAABBCCDD, key_out=0x11223344)
    (ok, _), (ik, _) = O.flow_entries(e, "203.0.113.1", 0, 3, 4)
    assert ik[12:16] == b"\xaa\xbb\xcc\xdd" and ik[16:20] == b"\0\0\0\0" and ik[20] == 50
    assert ok[12:16] == b"\x11\x22\x33\x44"  # a rekeyed SA's new outbound SPI misses: the daemon sees it


def test_policy_bits_follow_toggles():
    assert O.policy_bits(Config({})) == 3
    assert O.policy_bits(Config({"l2tp_passthrough": "0"})) == 1
    assert O.policy_bits(Config({"ipsec_passthrough": "0"})) == 2
    assert O.policy_bits(Config({"enabled": "0"})) == 0


def test_plan_learns_installs_retries_and_forgets():
    p = O.OffloadPlan(3, 4, retry=2.0)
    a = flow("natt", "192.168.1.10", "203.0.113.2", 0x3001, 4500, 4500)
    a2 = flow("natt", "192.168.1.10", "203.0.113.2", 0x3002, 4500, 4500)  # rekeyed SA, same pair
    b = flow("natt", "192.168.1.11", "203.0.113.2", 0x4001, 4500, 4500, zone=4108)
    ike = flow("ike", "192.168.1.10", "203.0.113.2", 77, 500, 500)
    flows = [a, a2, b, ike]
    pend = p.pending(flows, 10.0)
    assert pend == [O.flow_pair(a), O.flow_pair(b)]  # a2 shares a's pair: one lookup
    entries = O.parse_conntrack(CT)
    assert p.learn(pend[:1], entries, 10.0) == [O.flow_pair(a)]
    assert p.learn(pend[1:], entries, 10.0) == []  # unreplied: tried, not learned
    assert p.pending(flows, 11.0) == []  # b waits for the retry interval
    assert p.pending(flows, 12.5) == [O.flow_pair(b)]
    assert O.lookups(O.flow_pair(b)) == [(17, ("192.168.1.11", "203.0.113.2", 4500, 4500), False),
                                         (17, ("192.168.1.11", "203.0.113.2", 4500, 4500), True)]
    want = p.desired(flows)
    assert len(want) == 4  # both SAs of the pair, each both ways
    dels, adds = O.diff({}, want)
    assert dels == [] and len(adds) == 4
    installed = dict((k, O.val_config(v)) for k, v in adds)
    assert O.diff(installed, want) == ([], [])
    # Counters: activity since the last refresh makes a pair due, once.
    counts = dict((k, 0) for k in want)
    assert p.refresh_due(flows, counts) == []
    inbound_a2 = O.flow_entries(a2, "203.0.113.1", 4500, 3, 4)[1][0]
    counts[inbound_a2] = 10
    assert p.refresh_due(flows, counts) == [O.flow_pair(a)]
    assert p.refresh_due(flows, counts) == []
    # The conntrack entry went: its entries go, the pair is looked up again.
    p.forget(O.flow_pair(a))
    dels, adds = O.diff(installed, p.desired(flows))
    assert len(dels) == 4 and adds == []
    assert O.flow_pair(a) in p.pending(flows, 20.0)
    # Flows gone: translations and retry marks go with them.
    p.learn([O.flow_pair(a)], entries, 20.0)
    assert p.desired([]) == {} and p.trans == {} and p.tried == {}


def test_translated_natt_port_keys_inbound_and_rewrites_outbound():
    """natt_ports distinct: conntrack moved a host's 4500 to a port of its own; the entries take
    it from the entry, not from the flow (which says 4500 on the LAN side)."""
    ct = ("udp      17 170 src=192.168.1.11 dst=203.0.113.2 sport=4500 dport=4500 src=203.0.113.2 dst=203.0.113.1 "
          "sport=4500 dport=14767 [ASSURED] mark=0 zone=4108 use=1\n")
    f = flow("natt", "192.168.1.11", "203.0.113.2", 0x2002, 4500, 4500, zone=4108, key_out=0x1002)
    f.wan_port = 14767
    t = O.find_translation(O.flow_pair(f), O.parse_conntrack(ct))
    assert t[:2] == ("203.0.113.1", 14767), t
    (ok, ov), (ik, iv) = O.flow_entries(f, t[0], t[1], 3, 4)
    assert ok == O.pack_key(3, "192.168.1.11", "203.0.113.2", b"\x00\x00\x10\x02", 4500, 4500, 17)
    assert ov == O.pack_val("203.0.113.1", 14767, False, "ipsec", 4)  # source rewritten to the WAN port
    assert ik == O.pack_key(4, "203.0.113.2", "203.0.113.1", b"\x00\x00\x20\x02", 4500, 14767, 17)
    assert iv == O.pack_val("192.168.1.11", 4500, True, "ipsec", 3)  # and back to 4500 inbound
    p = O.OffloadPlan(3, 4)
    assert p.learn(p.pending([f], 1.0), O.parse_conntrack(ct), 1.0) == [O.flow_pair(f)]
    assert ik in p.desired([f])


def test_an_entry_made_again_with_another_port_is_not_carried_with_the_old_one():
    """The interop matrix caught it: conntrack flushed between two runs of the same clients, the
    host's NAT-T port planned anew (4500 -> a distinct port); the SAs left from the first run
    kept the pair alive and the new SAs were offloaded with the old port, which was the other
    host's by then (the server saw the two hosts' ESP swap ports)."""
    old = ("udp      17 170 src=192.168.1.20 dst=203.0.113.20 sport=4500 dport=4500 src=203.0.113.20 "
           "dst=203.0.113.1 sport=4500 dport=4500 [ASSURED] mark=0 zone=4117 use=1\n")
    new = old.replace("dport=4500 [ASSURED]", "dport=14776 [ASSURED]")
    left = flow("natt", "192.168.1.20", "203.0.113.20", 0x5001, 4500, 4500, zone=4117)
    p = O.OffloadPlan(3, 4)
    pair = O.flow_pair(left)
    assert p.learn(p.pending([left], 1.0), O.parse_conntrack(old), 1.0) == [pair]
    assert not p.check(pair, O.parse_conntrack(old)[0])  # the same entry: kept
    fresh = flow("natt", "192.168.1.20", "203.0.113.20", 0x6001, 4500, 4500, zone=4117)
    assert p.check(pair, O.parse_conntrack(new)[0])  # same tuple, other port: forgotten
    assert p.desired([left, fresh]) == {}
    assert p.pending([left, fresh], 2.0) == [pair]
    assert p.learn([pair], O.parse_conntrack(new), 2.0) == [pair]
    assert O.flow_entries(fresh, "203.0.113.1", 14776, 3, 4)[0] in p.desired([left, fresh]).items()
    # gone (None) or not yet answered: forgotten too; nothing learned: nothing to forget
    assert p.check(pair, None) and not p.check(pair, None)
    p.learn([pair], O.parse_conntrack(new), 3.0)
    assert p.check(pair, O.parse_conntrack(new.replace("[ASSURED]", "[UNREPLIED]"))[0])


def test_a_ppp_wan_gets_outbound_entries_without_mac_header():
    """PPPoE WAN: the WAN port is the ppp device. Outbound entries (to it) say oif_l3, so the
    program writes no Ethernet header there; inbound ones (to the Ethernet LAN) do not."""
    v = O.pack_val("203.0.113.1", 4500, False, "ipsec", 9, oif_l3=True)
    assert len(v) == O.VAL_SIZE and v[12:16] == b"\x01\x00\x00\x00" and O.val_config(v) == v[:16]
    assert O.pack_val("203.0.113.1", 4500, False, "ipsec", 9)[12:16] == b"\0\0\0\0"
    f = flow("natt", "192.168.1.20", "203.0.113.20", 0x7001, 4500, 4500)
    (ok, ov), (ik, iv) = O.flow_entries(f, "203.0.113.101", 4500, 3, 9, wan_l3=True)
    assert ov == O.pack_val("203.0.113.101", 4500, False, "ipsec", 9, True)
    assert iv == O.pack_val("192.168.1.20", 4500, True, "ipsec", 3, False)
    p = O.OffloadPlan(3, 9, wan_l3=True)
    p.trans[O.flow_pair(f)] = ("203.0.113.101", 4500, (17, ("192.168.1.20", "203.0.113.20", 4500, 4500)))
    assert p.desired([f]) == {ok: ov, ik: iv}
