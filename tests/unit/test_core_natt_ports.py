# micropython: run
"""NAT-T port policy (option natt_ports): the port allocator (nat/mapping.NattPorts) and the
engine's use of it, on decoded packets (pure; tests/lab/test_lab_passthrough.py shows the
kernel translating with real nftables and conntrack)."""
from passthrough.config import Config
from passthrough.engine import Engine
from nat import mapping as M

LAN1, LAN2, LAN3, SRV, SRV2, WAN = "192.168.1.10", "192.168.1.11", "192.168.1.12", "203.0.113.2", "203.0.113.3", "203.0.113.1"
Z1, Z2, Z3 = 4107, 4108, 4109
P2 = M.NATT_PORT_FIRST + 267 % M.NATT_PORT_COUNT  # 192.168.1.11: low 16 bits 1*256 + 11
P3 = M.NATT_PORT_FIRST + 268 % M.NATT_PORT_COUNT


def allocator(**kw):
    logs = []
    a = M.NattPorts(log=lambda level, msg: logs.append((level, msg)), **kw)
    a.logs = logs
    return a


def names(ops):
    return [(o[0], o[1]) for o in ops]


# --- the allocator ------------------------------------------------------------------------------
def test_first_host_keeps_4500_later_hosts_get_ports_of_their_own():
    a = allocator()
    assert a.claim(LAN1, Z1, SRV, 1.0, True) == (4500, [])
    port, ops = a.claim(LAN2, Z2, SRV, 1.1, True)
    assert port == P2 and P2 != 4500
    c = "natt-port %s %s %d" % (LAN2, SRV, P2)
    assert ops == [("add", "natt_out", (LAN2, SRV), P2, c), ("add", "natt_in", (SRV, P2), Z2, c)]
    port3, ops3 = a.claim(LAN3, Z3, SRV, 1.2, True)
    assert port3 == P3 and names(ops3) == [("add", "natt_out"), ("add", "natt_in")]
    # The same host again: its port, nothing to program.
    assert a.claim(LAN2, Z2, SRV, 2.0, True) == (P2, []) and a.claim(LAN1, Z1, SRV, 2.0, True) == (4500, [])
    # Another server: the first host there keeps 4500 whoever holds it elsewhere.
    assert a.claim(LAN2, Z2, SRV2, 2.1, True) == (4500, [])
    assert a.owner(SRV, P2) == LAN2 and a.owner(SRV2, P2) is None
    assert a.distinct_in_use() == 2 and len(a) == 4 and a.allocated == 2


def test_preserve_records_who_keeps_4500_so_a_switch_to_distinct_knows():
    a = allocator()
    assert a.claim(LAN1, Z1, SRV, 1.0, False) == (4500, [])
    assert a.claim(LAN2, Z2, SRV, 1.0, False) == (4500, [])  # preserve: everyone keeps it
    assert a.distinct_in_use() == 0
    # natt_ports switched to distinct: both live hosts' conntrack entries keep 4500; a new one
    # gets its own port, the old ones are left as they are.
    assert a.claim(LAN2, Z2, SRV, 2.0, True) == (4500, [])
    assert a.claim(LAN3, Z3, SRV, 2.0, True)[0] == P3


def test_ports_derive_from_the_address_next_free_on_a_clash():
    a = allocator(first=20000, count=4)
    a.claim("10.0.0.1", 1, SRV, 0.0, True)
    assert a.claim("10.0.0.6", 6, SRV, 0.0, True)[0] == 20002  # 6 % 4
    assert a.claim("10.0.0.10", 10, SRV, 0.0, True)[0] == 20003  # 10 % 4 = 2 taken -> 3
    assert a.claim("10.0.0.14", 14, SRV, 0.0, True)[0] == 20000  # 2, 3 taken -> wraps to 0
    assert a.range_text() == "20000-20003"


def test_freed_when_the_flows_are_gone_and_the_hold_has_passed():
    a = allocator()
    a.claim(LAN1, Z1, SRV, 0.0, True)
    a.claim(LAN2, Z2, SRV, 0.0, True)
    live = {(LAN1, SRV): True, (LAN2, SRV): True}

    def is_live(lan, remote):
        return live.get((lan, remote), False)

    assert a.expire(1000.0, 180, is_live) == []  # flows alive: kept however old
    live[(LAN2, SRV)] = False
    assert a.expire(100.0, 180, is_live) == []  # no flow, but within the hold
    assert a.expire(181.0, 180, is_live) == [("del", "natt_out", (LAN2, SRV)), ("del", "natt_in", (SRV, P2))]
    assert a.port(LAN2, SRV) is None and a.owner(SRV, P2) is None and a.distinct_in_use() == 0
    # Activity seen later (kernel counters through the flows) moves the hold on.
    a.claim(LAN2, Z2, SRV, 200.0, True)
    a.touch(LAN2, SRV, 300.0)
    assert a.expire(450.0, 180, is_live) == [] and a.port(LAN2, SRV) == P2
    # The keeper goes: the next newcomer keeps 4500, the host with a distinct port keeps it.
    live[(LAN1, SRV)] = False
    assert a.expire(450.0, 180, is_live) == []  # LAN1 a keeper: nothing in the kernel to delete
    assert a.port(LAN1, SRV) is None
    assert a.claim(LAN3, Z3, SRV, 451.0, True) == (4500, [])


def test_range_exhausted_logs_and_keeps_4500_never_raises():
    a = allocator(first=30000, count=2)
    hosts = ["10.0.1.%d" % i for i in range(1, 40)]
    ports = [a.claim(h, 100 + i, SRV, 5.0, True)[0] for i, h in enumerate(hosts)]
    assert ports[0] == 4500 and sorted(ports[1:3]) == [30000, 30001]
    assert ports[3:] == [4500] * (len(hosts) - 3)  # told apart by SPI, as in preserve
    assert a.exhausted == len(hosts) - 3
    warned = [m for lv, m in a.logs if lv == "warning"]
    assert len(warned) == 1 and "30000-30001" in warned[0] and SRV in warned[0], a.logs  # once a minute
    assert a.claim(hosts[5], 105, SRV, 5.0, True) == (4500, [])  # recorded: not claimed again
    # A port freed: the next newcomer gets it.
    a.release(hosts[1], SRV)
    assert a.claim("10.0.2.1", 200, SRV, 6.0, True)[0] in (30000, 30001)


def test_an_existing_conntrack_translation_stands():
    """A connection older than the table (fresh start, table reinstalled): what conntrack
    translates it to is what the pair gets, whoever comes first now."""
    a = allocator()
    # LAN2's entry already says P2: it keeps P2 (elements written again), though nobody holds 4500.
    port, ops = a.claim(LAN2, Z2, SRV, 1.0, True, found=P2)
    assert port == P2 and [(o[1], o[2], o[3]) for o in ops] == [("natt_out", (LAN2, SRV), P2), ("natt_in", (SRV, P2), Z2)]
    # LAN1's says 4500: it keeps it, though it is not the first now.
    assert a.claim(LAN1, Z1, SRV, 1.1, True, found=4500) == (4500, [])
    assert a.port(LAN1, SRV) == 4500 and a.claim(LAN3, Z3, SRV, 1.2, True)[0] == P3
    # A port the kernel chose itself, or one taken: reported, not recorded.
    assert a.claim("192.168.1.20", 4117, SRV, 1.3, True, found=1025) == (1025, [])
    assert a.claim("192.168.1.21", 4118, SRV, 1.3, True, found=P2) == (P2, [])
    assert a.port("192.168.1.20", SRV) is None and a.owner(SRV, P2) == LAN2
    # Recorded pairs are not looked at again.
    assert a.claim(LAN2, Z2, SRV, 2.0, True, found=4500) == (P2, [])


def test_pairs_are_bounded():
    a = allocator(max_pairs=3)
    for i in range(10):
        a.claim("10.0.3.%d" % i, i, SRV, 0.0, True)
    assert len(a) == 3
    assert a.claim("10.0.3.9", 9, SRV, 0.0, True) == (4500, [])  # unrecorded beyond the bound


def test_comment_roundtrip():
    assert M.parse_natt_comment(M.natt_comment(LAN2, SRV, P2)) == (LAN2, SRV, P2)
    for bad in (None, "", "natt-port a b", "natt-port a b x", "esp a 1 2 3"):
        assert M.parse_natt_comment(bad) is None


def kernel_state():
    a = allocator()
    a.claim(LAN1, Z1, SRV, 0.0, True)
    ops = a.claim(LAN2, Z2, SRV, 0.0, True)[1] + a.claim(LAN3, Z3, SRV, 0.0, True)[1]
    out = [(o[2][0], o[2][1], o[3], o[4]) for o in ops if o[1] == "natt_out"]
    inn = [(o[2][0], o[2][1], o[3], o[4]) for o in ops if o[1] == "natt_in"]
    return out, inn


def test_readoption_is_deterministic_and_removes_what_does_not_fit():
    out, inn = kernel_state()
    zones = {LAN1: Z1, LAN2: Z2, LAN3: Z3}
    results = []
    for order in (1, -1):
        a = allocator()
        ops, n = a.adopt(out[::order], inn[::order], zones.get, 10.0)
        results.append((ops, n, sorted(a.port_of.items()), sorted(a.zone_of.items())))
    assert results[0] == results[1]
    ops, n, ports, _ = results[0]
    assert ops == [] and n == 2 and ports == [((LAN2, SRV), P2), ((LAN3, SRV), P3)]
    # Broken or foreign state: deleted (comment not ours, unknown host, outside the range, a
    # second host on one port); a missing or wrong natt_in is written again.
    bad_out = out + [("192.168.1.99", SRV, 14999, M.natt_comment("192.168.1.99", SRV, 14999)),
                     (LAN1, SRV2, 9999, M.natt_comment(LAN1, SRV2, 9999)),
                     (LAN1, SRV, P2, M.natt_comment(LAN1, SRV, P2)),
                     (LAN3, SRV2, P3, "something else")]
    bad_in = [inn[0], (SRV, P3, Z1, inn[1][3]), ("198.51.100.7", 15000, Z1, "x")]
    a = allocator()
    ops, n = a.adopt(bad_out, bad_in, zones.get, 10.0)
    assert n == 2 and a.owner(SRV, P2) == LAN2  # natt_in names P2's host: LAN1's claim goes
    assert sorted(o for o in ops if o[0] == "del") == sorted([
        ("del", "natt_out", ("192.168.1.99", SRV)), ("del", "natt_out", (LAN1, SRV2)),
        ("del", "natt_out", (LAN1, SRV)), ("del", "natt_out", (LAN3, SRV2)),
        ("del", "natt_in", (SRV, P3)), ("del", "natt_in", ("198.51.100.7", 15000))])
    adds = [o for o in ops if o[0] == "add"]
    assert [(o[1], o[2], o[3]) for o in adds] == [("natt_in", (SRV, P3), Z3)]
    # After re-adoption a newcomer does not get a port in use.
    a.adopt_keeper(LAN1, SRV, 10.0)
    p, _ = a.claim("192.168.5.11", 4200, SRV, 11.0, True)  # same low bits as LAN2 modulo the range
    assert p not in (4500, P2, P3)


# --- the engine -----------------------------------------------------------------------------------
def pkt(src, dst, proto, **kw):
    d = {"error": None, "ipver": 4, "src": src, "dst": dst, "l4": 17, "sport": None, "dport": None, "proto": proto}
    for k in kw:
        d[k] = kw[k]
    return d


def ike(src, dst, spi_i, port=4500, dport=None):
    return pkt(src, dst, "ike", sport=port, dport=dport or port, ike_spi_i="%016x" % spi_i, ike_spi_r="0" * 16,
               ike_version=2, ike_exchange="IKE_AUTH")


def natt(src, dst, spi, sport=4500, dport=4500):
    return pkt(src, dst, "esp", sport=sport, dport=dport, esp_spi="%08x" % spi, esp_seq=1, esp_udp=True)


def engine(**opts):
    logs = []
    e = Engine(Config(opts), lambda level, msg: logs.append((level, msg)))
    e.logs = logs
    return e


def natt_ops(ops):
    return [o for o in ops if o[1] in ("natt_out", "natt_in")]


def test_engine_distinct_gives_the_second_host_a_port_before_the_verdict():
    e = engine(natt_ports="distinct")
    assert natt_ops(e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)) == []
    ops = e.handle(ike(LAN2, SRV, 0xA2), False, 1.1)
    assert [(o[0], o[1], o[2], o[3]) for o in natt_ops(ops)] == [
        ("add", "natt_out", (LAN2, SRV), P2), ("add", "natt_in", (SRV, P2), Z2)]
    # zone first, then the port (the element holds the zone the host's packets get)
    assert [o[1] for o in ops].index("lan_zone") < [o[1] for o in ops].index("natt_out")
    ports = dict((r["lan_ip"], (r["lan_port"], r["wan_port"])) for r in e.status(2.0) if r["kind"] == "ike")
    assert ports == {LAN1: (4500, 4500), LAN2: (4500, P2)}
    assert e.stats["natt_distinct"] == 1
    # ESP-in-UDP of both: pending with their external ports.
    assert natt_ops(e.handle(natt(LAN1, SRV, 0x1001), False, 1.2)) == []
    assert natt_ops(e.handle(natt(LAN2, SRV, 0x1002), False, 1.3)) == []
    assert sorted((p.lan_ip, p.wan_port) for p in e.pending.values()) == [(LAN1, 4500), (LAN2, P2)]


def test_engine_asks_conntrack_for_a_new_pair_and_again_for_a_distinct_port():
    asked = []
    kernel = {(LAN1, SRV): P2 + 5, (LAN2, SRV): 4500}  # what conntrack already translates to

    def probe(lan, zone, remote):
        asked.append((lan, zone, remote))
        return kernel.get((lan, remote))

    e = Engine(Config({"natt_ports": "distinct"}), natt_probe=probe)
    ops = e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)  # first now, but its entry has a port
    assert [(o[1], o[3]) for o in natt_ops(ops)] == [("natt_out", P2 + 5), ("natt_in", Z1)]
    assert natt_ops(e.handle(ike(LAN2, SRV, 0xA2), False, 1.1)) == []  # its entry keeps 4500
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.2)  # a distinct port: asked again, still stands
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.25)  # 4500, the only keeper: not asked again
    e.handle(ike(LAN1, SRV, 0xA9, port=500), False, 1.3)  # UDP 500: never asked
    assert asked == [(LAN1, Z1, SRV), (LAN2, Z2, SRV), (LAN1, Z1, SRV)]
    assert dict((r["lan_ip"], r["wan_port"]) for r in e.status(2.0) if r["remote_port"] == 4500) == {
        LAN1: P2 + 5, LAN2: 4500}


def test_engine_pairs_an_inbound_spi_by_the_port_it_came_to():
    e = engine(natt_ports="distinct")
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    e.handle(natt(LAN1, SRV, 0x1001), False, 1.0)  # waits longest: plain pairing would pick it
    e.handle(natt(LAN2, SRV, 0x1002), False, 1.1)
    ops = e.handle(natt(SRV, WAN, 0x2002, dport=P2), True, 1.2)
    assert [(o[1], o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [("esp_zone", (SRV, 0x2002), Z2)]
    ops = e.handle(natt(SRV, WAN, 0x2001, dport=4500), True, 1.3)
    assert [(o[1], o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [("esp_zone", (SRV, 0x2001), Z1)]


def test_engine_preserve_and_udp_500_never_translate():
    e = engine(natt_ports="preserve")
    e.handle(ike(LAN1, SRV, 0xB1), False, 1.0)
    assert natt_ops(e.handle(ike(LAN2, SRV, 0xB2), False, 1.0)) == []
    assert all(r["wan_port"] == 4500 for r in e.status(2.0))
    d = engine(natt_ports="distinct")
    for lan, spi in ((LAN1, 0xC1), (LAN2, 0xC2), (LAN3, 0xC3)):
        assert natt_ops(d.handle(ike(lan, SRV, spi, port=500), False, 1.0)) == []
    assert all(r["wan_port"] == 500 for r in d.status(2.0))
    # a host floating from another source port (behind a second NAT) is left to the kernel
    assert natt_ops(d.handle(ike(LAN1, SRV2, 0xC4, port=40000, dport=4500), False, 1.0)) == []
    assert natt_ops(d.handle(ike(LAN2, SRV2, 0xC5, port=40001, dport=4500), False, 1.0)) == []


def test_engine_frees_the_port_after_the_flows_and_a_udp_timeout():
    e = engine(natt_ports="distinct", flow_timeout="60", udp_timeout="120")
    e.handle(ike(LAN1, SRV, 0xA1), False, 0.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 0.0)
    assert natt_ops(e.expire(50.0)) == []
    ops = e.expire(61.0)  # flows gone, but conntrack may still translate for a while
    assert natt_ops(ops) == [] and e.natt.port(LAN2, SRV) == P2
    ops = e.expire(121.0)
    assert natt_ops(ops) == [("del", "natt_out", (LAN2, SRV)), ("del", "natt_in", (SRV, P2))]
    assert e.natt.distinct_in_use() == 0 and len(e.natt) == 0


def test_engine_ipsec_off_releases_every_port():
    e = engine(natt_ports="distinct")
    e.handle(ike(LAN1, SRV, 0xA1), False, 0.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 0.0)
    ops, off = e.set_config(Config({"natt_ports": "distinct", "ipsec_passthrough": "0"}))
    assert off == ["ipsec"] and ("del", "natt_in", (SRV, P2)) in ops and len(e.natt) == 0
    # ipsec off: nothing is claimed
    assert e.handle(ike(LAN3, SRV, 0xA3), False, 1.0) == [] and len(e.natt) == 0


def test_engine_readopts_ports_and_keepers_after_a_restart():
    first = engine(natt_ports="distinct")
    ops = []
    for lan, spi in ((LAN1, 0xA1), (LAN2, 0xA2)):
        ops += first.handle(ike(lan, SRV, spi), False, 0.0)
    lan_zone = [(o[2][0], o[3]) for o in ops if o[1] == "lan_zone"]
    keyed = [(o[1], o[2][0], o[2][1], o[3], o[4]) for o in ops if o[1] == "ike_zone"]
    out = [(o[2][0], o[2][1], o[3], o[4]) for o in ops if o[1] == "natt_out"]
    inn = [(o[2][0], o[2][1], o[3], o[4]) for o in ops if o[1] == "natt_in"]
    e = engine(natt_ports="distinct")
    ops, n = e.adopt(lan_zone, keyed, [], 5.0, out, inn)
    assert ops == [] and n == 2
    ports = dict((r["lan_ip"], r["wan_port"]) for r in e.status(6.0))
    assert ports == {LAN1: 4500, LAN2: P2}
    # LAN1 still holds 4500 (an adopted flow at 4500 without a distinct port): a newcomer gets one.
    assert e.handle(ike(LAN3, SRV, 0xA3), False, 6.0) and e.natt.port(LAN3, SRV) == P3


def test_engine_never_pairs_across_ports():
    """A distinct port names its host; 4500 is not for the hosts moved off it. A guess across
    ports would outrank the port in the kernel's classify chain and cut the right host off."""
    e = engine(natt_ports="distinct")
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    e.handle(natt(LAN2, SRV, 0x1002), False, 1.1)  # only the host at P2 waits
    ops = e.handle(natt(SRV, WAN, 0x2001, dport=4500), True, 1.2)  # the server to LAN1 first
    assert [o for o in ops if o[1] == "esp_zone"] == [] and e.stats["unmatched"] == 1
    e.handle(natt(LAN1, SRV, 0x1001), False, 1.3)
    ops = e.handle(natt(SRV, WAN, 0x2001, dport=4500), True, 1.4)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2001), Z1)]
    e2 = engine(natt_ports="distinct")
    e2.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e2.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    e2.handle(natt(LAN1, SRV, 0x1001), False, 1.1)  # only the host at 4500 waits
    ops = e2.handle(natt(SRV, WAN, 0x2002, dport=P2), True, 1.2)
    assert [o for o in ops if o[1] == "esp_zone"] == [] and len(e2.pending) == 1


def test_engine_a_hosts_older_unanswered_sa_does_not_jump_the_queue():
    """LAN1 left an SA waiting (its client restarted); both hosts then bring up new ones, LAN1
    first: the first reply is LAN1's, the second LAN2's (not LAN1's stale SA winning twice)."""
    e = engine(natt_ports="preserve", pair_window="30")
    e.handle(natt(LAN1, SRV, 0x1000), False, 1.0)  # never answered
    e.handle(natt(LAN1, SRV, 0x1001), False, 20.0)
    e.handle(natt(LAN2, SRV, 0x1002), False, 20.1)
    ops = e.handle(natt(SRV, WAN, 0x2001), True, 20.2)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2001), Z1)]
    ops = e.handle(natt(SRV, WAN, 0x2002), True, 20.3)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2002), Z2)]


def test_engine_an_sa_left_from_a_given_up_negotiation_comes_last():
    """The interop matrix's sequence (preserve, strongSwan to strongSwan, L2TP): LAN2's SA from
    the previous negotiation was never answered; both hosts start new IKE SAs, LAN1's new SA
    waits first, the reply to it comes before LAN2's new SA is seen. It is LAN1's, not the
    leftover's; then LAN2's reply goes to LAN2's new SA."""
    e = engine(natt_ports="preserve", pair_window="30")
    e.handle(ike(LAN2, SRV, 0xB2), False, 0.0)
    e.handle(natt(LAN2, SRV, 0x1000), False, 8.0)  # never answered
    e.handle(ike(LAN1, SRV, 0xA1), False, 30.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 30.1)
    e.handle(natt(LAN1, SRV, 0x1001), False, 32.0)
    ops = e.handle(natt(SRV, WAN, 0x2001), True, 32.03)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2001), Z1)]
    e.handle(natt(LAN2, SRV, 0x1002), False, 32.06)
    ops = e.handle(natt(SRV, WAN, 0x2002), True, 32.08)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2002), Z2)]
    assert not e.pending  # the leftover went with LAN2's pairing
    # With nobody fresher waiting, a leftover still gets its answer (a slow server).
    e2 = engine(natt_ports="preserve", pair_window="30")
    e2.handle(natt(LAN2, SRV, 0x1000), False, 8.0)
    e2.handle(ike(LAN2, SRV, 0xA2), False, 9.0)
    ops = e2.handle(natt(SRV, WAN, 0x2000), True, 9.5)
    assert [(o[2], o[3]) for o in ops if o[1] == "esp_zone"] == [((SRV, 0x2000), Z2)]


def test_engine_a_mode_change_plans_pairs_without_a_connection_again():
    """preserve -> distinct: hosts recorded at 4500 whose connections are gone (conntrack has
    no entry) are planned again, so one keeps 4500 and the other gets a port; a live
    connection keeps its translation. distinct -> preserve: a distinct port without a
    connection is given up (its elements deleted) and the host keeps 4500."""
    kernel = {}

    def probe(lan, zone, remote):
        return kernel.get((lan, remote))

    e = Engine(Config({"natt_ports": "preserve"}), natt_probe=probe)
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    assert e.natt.port(LAN1, SRV) == e.natt.port(LAN2, SRV) == 4500
    e.set_config(Config({"natt_ports": "distinct"}))
    kernel[(LAN1, SRV)] = 4500  # LAN1's connection still stands; LAN2's was flushed
    assert natt_ops(e.handle(ike(LAN1, SRV, 0xA1), False, 2.0)) == []
    ops = e.handle(ike(LAN2, SRV, 0xA2), False, 2.1)
    assert [(o[0], o[1], o[3]) for o in natt_ops(ops)] == [("add", "natt_out", P2), ("add", "natt_in", Z2)]
    kernel.clear()
    e.set_config(Config({"natt_ports": "preserve"}))
    ops = e.handle(ike(LAN2, SRV, 0xA2), False, 3.0)
    assert natt_ops(ops) == [("del", "natt_out", (LAN2, SRV)), ("del", "natt_in", (SRV, P2))]
    assert e.natt.port(LAN2, SRV) == 4500 and e.natt.distinct_in_use() == 0
    # no probe, no re-plan: the recorded port stands (the kernel cannot be asked)
    e3 = engine(natt_ports="preserve")
    e3.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e3.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    e3.set_config(Config({"natt_ports": "distinct"}))
    assert natt_ops(e3.handle(ike(LAN2, SRV, 0xA2), False, 2.0)) == []


def test_engine_a_stale_keeper_does_not_push_a_lone_host_off_4500():
    """Two hosts were at 4500 (an earlier session); both connections are gone. Under
    'distinct' the first host back keeps 4500: the other's record does not count without a
    live connection (its conntrack entry), and the other gets a port when it comes back."""
    kernel = {}

    def probe(lan, zone, remote):
        return kernel.get((lan, remote))

    e = Engine(Config({"natt_ports": "preserve"}), natt_probe=probe)
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    e.set_config(Config({"natt_ports": "distinct"}))
    assert natt_ops(e.handle(ike(LAN1, SRV, 0xB1), False, 2.0)) == []
    assert e.natt.port(LAN1, SRV) == 4500 and e.natt.port(LAN2, SRV) is None
    kernel[(LAN1, SRV)] = 4500  # LAN1's new connection stands
    ops = e.handle(ike(LAN2, SRV, 0xB2), False, 2.1)
    assert [(o[0], o[1], o[3]) for o in natt_ops(ops)] == [("add", "natt_out", P2), ("add", "natt_in", Z2)]


def test_engine_a_host_alone_again_goes_back_to_4500():
    """LAN2 had a distinct port next to LAN1; both connections are gone. LAN2 comes back
    alone: it is at 4500 again (its elements deleted), not on a port planned for company."""
    kernel = {}

    def probe(lan, zone, remote):
        return kernel.get((lan, remote))

    e = Engine(Config({"natt_ports": "distinct"}), natt_probe=probe)
    e.handle(ike(LAN1, SRV, 0xA1), False, 1.0)
    e.handle(ike(LAN2, SRV, 0xA2), False, 1.0)
    assert e.natt.port(LAN2, SRV) == P2
    ops = e.handle(ike(LAN2, SRV, 0xB2), False, 5.0)
    assert natt_ops(ops) == [("del", "natt_out", (LAN2, SRV)), ("del", "natt_in", (SRV, P2))]
    assert e.natt.port(LAN2, SRV) == 4500 and e.natt.port(LAN1, SRV) is None
