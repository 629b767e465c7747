# micropython: run
"""The control-plane engine on decoded packets (no kernel, MicroPython-safe)."""
from passthrough.config import Config
from passthrough.engine import Engine

LAN1, LAN2, SRV = "192.168.1.10", "192.168.1.11", "203.0.113.2"
Z1, Z2 = 4096 + 1 + 10, 4096 + 1 + 11  # zones derive from the address (zone_base 4096)


def pkt(src, dst, proto, **kw):
    d = {"error": None, "ipver": 4, "src": src, "dst": dst, "l4": 17, "sport": None, "dport": None,
         "proto": proto}
    for k in kw:
        d[k] = kw[k]
    return d


def ike(src, dst, spi_i, sport=500, dport=500, spi_r="0000000000000000"):
    return pkt(src, dst, "ike", sport=sport, dport=dport, ike_spi_i="%016x" % spi_i, ike_spi_r=spi_r,
               ike_version=2, ike_exchange="IKE_SA_INIT")


def esp(src, dst, spi, udp=False):
    return pkt(src, dst, "esp", l4=17 if udp else 50, sport=4500 if udp else None, dport=4500 if udp else None,
               esp_spi="%08x" % spi, esp_seq=1, esp_udp=udp)


def l2tp(src, dst, tunnel, mtype, assigned=None, sport=1701, dport=1701):
    return pkt(src, dst, "l2tp", sport=sport, dport=dport, l2tp_version=2, l2tp_control=mtype != "data",
               l2tp_type=mtype, l2tp_tunnel=tunnel, l2tp_session=0, l2tp_assigned_tunnel=assigned)


def engine(**opts):
    logs = []
    e = Engine(Config(opts), lambda level, msg: logs.append((level, msg)))
    e.logs = logs
    return e


def ops_named(ops, name):
    return [o for o in ops if o[1] == name]


def test_first_packet_assigns_zone_and_learns_ike_spi():
    e = engine()
    ops = e.handle(ike(LAN1, SRV, 0xAAAA), False, 1.0)
    assert ops_named(ops, "lan_zone") == [("add", "lan_zone", (LAN1,), Z1)]
    assert ops_named(ops, "zone_lan") == [("add", "zone_lan", (Z1,), LAN1)]
    assert [o[:4] for o in ops_named(ops, "ike_zone")] == [("add", "ike_zone", (SRV, 0xAAAA), Z1)]
    ops = e.handle(ike(LAN2, SRV, 0xBBBB), False, 1.1)
    assert [o[:4] for o in ops_named(ops, "ike_zone")] == [("add", "ike_zone", (SRV, 0xBBBB), Z2)]
    rows = e.status(2.0)
    assert [(r["kind"], r["lan_ip"], r["key"], r["lan_port"], r["wan_port"]) for r in rows] == [
        ("ike", LAN1, "000000000000aaaa", 500, 500), ("ike", LAN2, "000000000000bbbb", 500, 500)]


def test_esp_pairing_oldest_waiting_host_first():
    e = engine()
    ops = e.handle(esp(LAN1, SRV, 0x1001), False, 1.0)
    zone1 = e.zones.zone_of(LAN1)
    assert ("add", "esp_out", (LAN1, 0x1001), zone1) in ops  # the host's zone: data zoned in one lookup
    e.handle(esp(LAN2, SRV, 0x1002), False, 1.2)
    ops = e.handle(esp(SRV, "203.0.113.1", 0x2001), True, 1.3)
    assert [o[:4] for o in ops_named(ops, "esp_zone")] == [("add", "esp_zone", (SRV, 0x2001), Z1)]
    ops = e.handle(esp(SRV, "203.0.113.1", 0x2002), True, 1.4)
    assert [o[:4] for o in ops_named(ops, "esp_zone")] == [("add", "esp_zone", (SRV, 0x2002), Z2)]
    assert e.stats["paired"] == 2 and not e.pending


def test_unknown_inbound_spi_without_waiting_host_is_left_alone():
    e = engine()
    assert e.handle(esp(SRV, "203.0.113.1", 0xDEAD), True, 1.0) == []
    assert e.stats["unmatched"] == 1 and len(e.flows) == 0


def test_natt_and_raw_esp_pair_separately():
    e = engine()
    e.handle(esp(LAN1, SRV, 0x1001, udp=True), False, 1.0)
    assert e.handle(esp(SRV, "203.0.113.1", 0x2001), True, 1.1) == []  # raw ESP: no raw SA waiting
    ops = e.handle(esp(SRV, "203.0.113.1", 0x2001, udp=True), True, 1.2)
    assert [o[:4] for o in ops_named(ops, "esp_zone")] == [("add", "esp_zone", (SRV, 0x2001), Z1)]
    assert e.status(2.0)[0]["kind"] == "natt"


def test_pending_esp_expires_after_pair_window():
    e = engine(pair_window="5")
    e.handle(esp(LAN1, SRV, 0x1001), False, 1.0)
    ops = e.expire(10.0)
    assert ("del", "esp_out", (LAN1, 0x1001)) in ops and not e.pending
    assert e.handle(esp(SRV, "203.0.113.1", 0x2001), True, 10.5) == []


def test_l2tp_tunnel_learned_from_sccrq_and_port_change():
    e = engine()
    ops = e.handle(l2tp(LAN1, SRV, 0, "SCCRQ", assigned=41), False, 1.0)
    assert [o[:4] for o in ops_named(ops, "l2tp_zone")] == [("add", "l2tp_zone", (SRV, 41), Z1)]
    ops = e.handle(l2tp(SRV, "203.0.113.1", 41, "SCCRP", assigned=100, sport=1702), True, 1.1)
    f = e.flows.get("l2tp", SRV, 41)
    assert f.key_out == 100 and f.remote_port == 1702 and f.state == "SCCRP"
    # the element is rewritten so a restarted daemon re-adopts the LNS's port and tunnel id
    assert ops_named(ops, "l2tp_zone") == [("del", "l2tp_zone", (SRV, 41)),
                                           ("add", "l2tp_zone", (SRV, 41), Z1, "l2tp %s 1701 1702 100" % LAN1)]
    e.handle(l2tp(LAN1, SRV, 100, "SCCCN", dport=1702), False, 1.2)
    assert f.state == "SCCCN"
    e.handle(l2tp(LAN1, SRV, 100, "StopCCN", dport=1702), False, 2.0)
    assert f.expires == 12.0
    ops = e.expire(12.5)
    assert ("del", "l2tp_zone", (SRV, 41)) in ops


def test_toggle_off_drops_family_flows_only():
    e = engine()
    e.handle(l2tp(LAN1, SRV, 0, "SCCRQ", assigned=41), False, 1.0)
    e.handle(ike(LAN1, SRV, 0xAAAA), False, 1.0)
    ops, off = e.set_config(Config({"l2tp_passthrough": "0"}))
    assert off == ["l2tp"] and ("del", "l2tp_zone", (SRV, 41)) in ops
    assert [f.kind for f in e.flows.flows.values()] == ["ike"]
    # While off, new L2TP is not learned.
    e.handle(l2tp(LAN2, SRV, 0, "SCCRQ", assigned=42), False, 2.0)
    assert e.flows.get("l2tp", SRV, 42) is None


def test_bounded_under_lan_flood_and_malformed_input():
    e = engine(max_flows="16", flows_per_host="8")
    for i in range(100):
        e.handle(ike(LAN1, SRV, 0x1000 + i), False, 1.0)
    assert len(e.flows) == 8 and e.stats["table_full"] == 92
    assert e.handle({"error": "truncated IPv4 header", "proto": "other", "ipver": None}, True, 1.0) == []
    assert e.stats["malformed"] == 1


def test_full_table_expires_before_refusing_and_deletes_elements():
    e = engine(max_flows="16", flow_timeout="30")
    for i in range(16):
        e.handle(ike(LAN1, SRV, 0x100 + i), False, 1.0)
    ops = e.handle(ike(LAN1, SRV, 0x999), False, 40.0)  # all 16 idle past flow_timeout
    assert len(e.flows) == 1 and e.flows.get("ike", SRV, 0x999) is not None
    assert ("del", "ike_zone", (SRV, 0x100)) in ops and ("del", "ike_zone", (SRV, 0x10f)) in ops


def test_wan_flood_of_random_keys_creates_nothing():
    e = engine()
    e.handle(ike(LAN1, SRV, 0xAAAA), False, 1.0)
    for i in range(500):
        e.handle(esp("198.51.100.%d" % (i % 250), "203.0.113.1", 0x50000 + i), True, 1.0)
        e.handle(ike(SRV, "203.0.113.1", 0x90000 + i), True, 1.0)
    # The legit IKE SA plus at most two peer-initiated guesses (spoofed server address).
    assert len(e.flows) <= 3 and not e.pending
    assert e.flows.get("ike", SRV, 0xAAAA) is not None


def test_peer_initiated_ike_sa_goes_to_the_only_host():
    e = engine()
    e.handle(ike(LAN1, SRV, 0xAAAA), False, 1.0)
    ops = e.handle(ike(SRV, "203.0.113.1", 0xCCCC), True, 2.0)
    assert [o[:4] for o in ops_named(ops, "ike_zone")] == [("add", "ike_zone", (SRV, 0xCCCC), Z1)]
    e.handle(ike(LAN2, SRV, 0xBBBB), False, 3.0)
    assert e.handle(ike(SRV, "203.0.113.1", 0xDDDD), True, 4.0) == []  # two hosts: ambiguous
    assert e.stats["ambiguous"] == 1


def test_host_zone_released_when_idle():
    e = engine(flow_timeout="30")
    e.handle(ike(LAN1, SRV, 0xAAAA), False, 1.0)
    ops = e.expire(40.0)
    assert ("del", "ike_zone", (SRV, 0xAAAA)) in ops and ("del", "lan_zone", (LAN1,)) in ops
    assert e.zones.hosts() == []


def test_adopt_rebuilds_state():
    e = engine()
    ops, n = e.adopt([(LAN1, 4100)], [("esp_zone", SRV, 0x2001, 4100, "esp 192.168.1.10 None None 4097"),
                                      ("ike_zone", SRV, 0x77, 4100, "not ours")],
                     [(LAN1, 4097), (LAN1, 0x9999)], 5.0)
    assert n == 1 and e.zones.zone_of(LAN1) == 4100
    assert ("del", "ike_zone", (SRV, 0x77)) in ops and ("del", "esp_out", (LAN1, 0x9999)) in ops
    assert e.flows.get("esp", SRV, 0x2001).key_out == 4097
