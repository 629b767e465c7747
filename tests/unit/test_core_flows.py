# micropython: run
"""Flow tables and zone allocation: bounds, expiry, reuse (MicroPython-safe)."""
from passthrough.flows import Flow, FlowTable, TableFull
from nat.mapping import ZoneAllocator, HostTableFull, key_op, flow_comment, parse_flow_comment


def test_table_bounds_global_and_per_host():
    t = FlowTable(max_flows=4, flows_per_host=3, timeout=10)
    for i in range(3):
        t.add(Flow("ike", "192.168.1.10", "203.0.113.2", i, 0.0))
    try:
        t.add(Flow("ike", "192.168.1.10", "203.0.113.2", 99, 0.0))
        raise AssertionError("per-host bound not enforced")
    except TableFull as e:
        assert "flows_per_host" in str(e)
    t.add(Flow("ike", "192.168.1.11", "203.0.113.2", 50, 0.0))
    try:
        t.add(Flow("ike", "192.168.1.12", "203.0.113.2", 51, 0.0))
        raise AssertionError("global bound not enforced")
    except TableFull:
        pass
    assert len(t) == 4


def test_full_table_refuses_and_leaves_expiry_to_the_caller():
    t = FlowTable(max_flows=2, flows_per_host=10, timeout=10)
    t.add(Flow("esp", "192.168.1.10", "203.0.113.2", 1, 0.0))
    t.add(Flow("esp", "192.168.1.10", "203.0.113.2", 2, 0.0))
    try:
        t.add(Flow("esp", "192.168.1.10", "203.0.113.2", 3, 20.0))
        raise AssertionError("full table accepted a flow")
    except TableFull:
        pass
    assert len(t.expire(20.0)) == 2
    t.add(Flow("esp", "192.168.1.10", "203.0.113.2", 3, 20.0))
    assert len(t) == 1 and t.per_host["192.168.1.10"] == 1


def test_expiry_and_deadline():
    t = FlowTable(timeout=10)
    a = t.add(Flow("l2tp", "192.168.1.10", "203.0.113.2", 7, 0.0))
    b = t.add(Flow("l2tp", "192.168.1.11", "203.0.113.2", 8, 0.0))
    b.expires = 3.0
    assert t.expire(2.0) == []
    assert t.expire(3.5) == [b]
    a.touch(9.0)
    assert t.expire(15.0) == []
    assert t.expire(19.5) == [a]
    assert len(t) == 0 and t.per_host == {}


def test_zone_allocator_is_deterministic_and_bounded():
    z = ZoneAllocator(zone_base=100, max_hosts=2)
    z1, ops = z.assign("192.168.1.10")
    assert z1 == 101 + (1 * 256 + 10) % 2 and ("add", "lan_zone", ("192.168.1.10",), z1) in ops
    assert z.assign("192.168.1.10") == (z1, [])
    z2, _ = z.assign("192.168.1.12")  # same preferred zone: probes to the other one
    assert z2 != z1 and z2 in (101, 102)
    try:
        z.assign("192.168.1.13")
        raise AssertionError("host bound not enforced")
    except HostTableFull:
        pass
    zone, ops = z.release("192.168.1.10")
    assert zone == z1 and ("del", "zone_lan", (z1,)) in ops
    assert z.assign("192.168.1.13")[0] == z1
    assert z.host_of(z2) == "192.168.1.12"


def test_zone_survives_a_restart():
    """A new allocator (daemon restarted, maps lost) gives every host the zone it had."""
    a, b = ZoneAllocator(4096, 256), ZoneAllocator(4096, 256)
    hosts = ["192.168.1.%d" % i for i in (10, 11, 57, 200)]
    first = [a.assign(h)[0] for h in hosts]
    again = [b.assign(h)[0] for h in reversed(hosts)]
    assert first == list(reversed(again)) and len(set(first)) == 4


def test_key_op_and_comment_roundtrip():
    f = Flow("natt", "192.168.1.10", "203.0.113.2", 0x2001, 0.0, zone=4097)
    f.lan_port, f.remote_port, f.key_out = 4500, 4500, 0x1001
    op = key_op(f)
    assert op[:4] == ("add", "esp_zone", ("203.0.113.2", 0x2001), 4097)
    assert parse_flow_comment(flow_comment(f)) == ("natt", "192.168.1.10", 4500, 4500, 0x1001)
    assert parse_flow_comment("garbage") is None
    assert key_op(Flow("esp", "192.168.1.10", "203.0.113.2", None, 0.0, zone=1)) is None
