# micropython: run
"""Rendering of the nft ruleset and element ops (pure; the lab tests load it into a kernel)."""
from passthrough.config import Config
from nat import nftables as N


def test_policy_drops_follow_toggles():
    on = N.render_policy(Config({}))
    assert "drop" not in on
    off = N.render_policy(Config({"l2tp_passthrough": "0", "pptp_passthrough": "0"}))
    assert "udp dport 1701 counter drop" in off and "meta l4proto 115 counter drop" in off
    assert "tcp dport 1723 counter drop" in off and "meta l4proto gre counter drop" in off
    assert "4500" not in off
    ipsec = N.render_policy(Config({"ipsec_passthrough": "0"}))
    assert "meta l4proto { esp, ah } counter drop" in ipsec


def test_backends_queue_statement():
    """Queued only while the daemon's heartbeat lives; otherwise zoned at once (steer_*)."""
    cfg = Config({"queue_num": "5"})
    nft = N.render_fastpath(cfg, "nft")
    for name, steer in (("queue_out", "steer_out"), ("queue_in", "steer_in")):
        rules = [l.strip() for l in chain(nft, name).strip().splitlines()]
        assert rules[-2:] == ["ip version @alive queue flags bypass to 5", "goto " + steer], rules
    assert "\tset alive { typeof ip version; flags timeout; }" in nft and "xt_queue" not in nft
    xt = N.render_fastpath(cfg, "xt")
    assert "queue flags" not in xt and "ip version @alive goto xt_queue" in chain(xt, "queue_out")
    assert chain(xt, "xt_queue").strip() == ""  # its one rule comes from nat/nftnetlink.py
    fan = N.render_fastpath(Config({"queue_num": "5", "queue_count": "3"}), "nft")
    assert "queue flags bypass,fanout to 5-7" in fan
    assert Config({"queue_backend": "iptables"}).queue_backend == "xt"  # the older name


def test_one_hook_and_no_way_back_into_the_queue():
    """classify is the only per-packet hook; a packet the daemon answered (mark_bit) is zoned,
    never queued again: every chain that leads to a queue tests the bit first."""
    for backend in ("nft", "xt"):
        r = N.render_fastpath(Config({"mark_bit": "0x1000", "natt_ports": "distinct"}), backend)
        hooks = [l.strip() for l in r.splitlines() if " hook " in l]
        assert [h for h in hooks if "type filter" in h] == ["type filter hook prerouting priority -310; policy accept;"]
        assert "chain steer {" not in r
        for name, steer in (("classify_out_vpn", "steer_out"), ("classify_in_vpn", "steer_in")):
            rules = [l.strip() for l in chain(r, name).strip().splitlines()]
            assert rules[0] == "meta mark & 0x00001000 != 0 goto " + steer and rules[-1] == "goto " + steer
        natt = chain(r, "classify_in_natt")
        assert "meta mark & 0x00001000 == 0 goto queue_in" in natt
        for name in ("steer_out", "steer_in"):  # the bit does not leave with the packet
            assert chain(r, name).strip().splitlines()[0].strip() == "meta mark set meta mark & 0xffffefff"


def chain(text, name):
    return text.split("chain %s {" % name)[1].split("\n\t}")[0]


def test_toggles_remove_classify_rules():
    r = N.render_fastpath(Config({"l2tp_passthrough": "0"}), "nft")
    assert "l2tp_zone" not in chain(r, "classify_in")
    learn_in = chain(r, "classify_in_vpn")
    assert "1701" not in learn_in and "@ike_zone" in learn_in
    assert "1701" not in chain(r, "classify_out_vpn")
    r = N.render_fastpath(Config({"ipsec_passthrough": "0"}), "nft")
    assert "esp_zone" not in chain(r, "classify_in") and "esp_out" not in chain(r, "classify_out")


def test_data_fast_path_one_lookup():
    """Known data: one map lookup in classify and out of the hook."""
    cfg = Config({"steer_mark_bit": "0x40000000"})
    r = N.render_fastpath(cfg, "xt")
    out = chain(r, "classify_out").strip().splitlines()
    assert out[0].strip() == "udp dport 4500 ct zone set ip saddr . @th,64,32 map @esp_out accept"
    assert out[1].strip() == "meta l4proto esp ct zone set ip saddr . @th,0,32 map @esp_out accept"
    assert chain(r, "classify_in").strip().splitlines()[0].strip() == \
        "udp dport 4500 ct zone set ip saddr . @th,64,32 map @esp_zone accept"
    assert "counter" not in r.split("map lan_zone {")[1].split("}")[0]


def test_queue_limits_from_config():
    r = N.render_fastpath(Config({"queue_limit_source": "50", "queue_limit_total": "400"}), "nft")
    queue_in = r.split("chain queue_in {")[1].split("\n\t}")[0]
    assert "limit rate over 50/second burst 100 packets" in queue_in
    assert "limit rate over 400/second burst 800 packets goto steer_in" in queue_in
    assert "limit rate over 100/second" in N.render_fastpath(Config({}), "nft")


def test_udp_timeout_and_devices():
    r = N.render_fastpath(Config({"udp_timeout": "300", "lan_device": "lan0", "wan_device": "eth1"}), "nft")
    assert "unreplied : 300, replied : 300" in r
    assert 'iifname "lan0" goto classify_out' in r and 'iifname "eth1" goto classify_in' in r


def test_classify_tests_key_sets_not_maps():
    """Kernels < 6.5 reject a lookup on a map that ignores its value: classify uses the twins."""
    r = N.render_fastpath(Config({}), "nft")
    for name in ("classify_out", "classify_in", "classify_out_vpn", "classify_in_vpn"):
        body = chain(r, name)
        for m in ("lan_zone", "esp_out", "ike_zone", "esp_zone", "l2tp_zone"):
            assert "!= @%s " % m not in body, (name, m)


def test_render_ops():
    assert N.render_op(("add", "esp_zone", ("203.0.113.2", 0x2001), 4097, "esp x 1 2 3")) == \
        'add element ip passthrough esp_zone { 203.0.113.2 . 0x00002001 comment "esp x 1 2 3" : 4097 }\n' \
        'add element ip passthrough esp_zone_k { 203.0.113.2 . 0x00002001 }'
    assert N.render_op(("del", "ike_zone", ("203.0.113.2", 0xAB))) == \
        "delete element ip passthrough ike_zone { 203.0.113.2 . 0x00000000000000ab }\n" \
        "delete element ip passthrough ike_zone_k { 203.0.113.2 . 0x00000000000000ab }"
    assert N.render_op(("add", "esp_out", ("192.168.1.10", 5), 4107)) == \
        "add element ip passthrough esp_out { 192.168.1.10 . 0x00000005 : 4107 }\n" \
        "add element ip passthrough esp_out_k { 192.168.1.10 . 0x00000005 }"
    assert N.render_op(("add", "zone_lan", (4097,), "192.168.1.10")) == \
        "add element ip passthrough zone_lan { 4097 : 192.168.1.10 }"


def test_prefilter_only_with_the_offload_program():
    cfg = Config({})
    plain = chain(N.render_fastpath(cfg, "xt"), "classify")
    assert "meta mark" not in plain
    pre = chain(N.render_fastpath(cfg, "xt", prefilter=(7, 9)), "classify").split("\n")
    # first the mark test the program's marks make possible (only on the ports that carry the
    # program, by ifindex), then the bit cleared for the rules
    # (nor mark_bit: a packet the daemon answered comes back through classify without the steer bit)
    # (TCP leaves before them: one compare is less than an ifindex and a mark test)
    assert pre[2].strip() == N.GATE[0] == "meta l4proto tcp accept", pre
    assert pre[3].strip() == "meta iif 7 meta mark & 0x30000000 == 0 accept", pre
    assert pre[4].strip() == "meta iif 9 meta mark & 0x30000000 == 0 accept", pre
    assert pre[5].strip() == "meta mark set meta mark & 0xdfffffff", pre
    assert [l.strip() for l in pre[6:9]] == list(N.GATE[1:]) and "goto classify_out" in pre[9]


def test_other_traffic_leaves_classify_first():
    """TCP, other protocols and UDP without a VPN port on either side leave at the head of
    classify, before the per-device jumps (what the rest of a home's traffic pays)."""
    rules = [l.strip() for l in chain(N.render_fastpath(Config({}), "nft"), "classify").strip().splitlines()]
    assert rules[1:5] == ["meta l4proto tcp accept",
                          "udp dport != 500-4500 udp sport != 500-4500 accept",
                          "udp dport & 0xffff != 500 udp dport & 0xffff != 4500 udp dport & 0xffff != 1701 "
                          "udp sport & 0xffff != 500 udp sport & 0xffff != 4500 udp sport & 0xffff != 1701 accept",
                          "meta l4proto != udp meta l4proto != esp accept"]
    assert rules[5].startswith("iifname")
    assert "{" not in " ".join(rules[1:5])  # compares only: no set lookup for other traffic


def test_natt_ports_maps_chains_and_postrouting():
    """natt_ports: the nat chain masquerades a host's first NAT-T packet to its distinct port
    before fw4's masquerade (100); replies to such a port are zoned by it."""
    for backend in ("nft", "xt"):
        r = N.render_fastpath(Config({"natt_ports": "distinct", "wan_device": "eth1"}), backend)
        assert "\tmap natt_out { typeof ip saddr . ip daddr : udp sport; }" in r
        assert "\tmap natt_in { typeof ip saddr . udp dport : ct zone; }" in r
        assert "\tset natt_in_k { typeof ip saddr . udp dport; }" in r
        post = chain(r, "nat_postrouting").strip().splitlines()
        assert [l.strip() for l in post] == [
            "type nat hook postrouting priority 99; policy accept;",
            'oifname "eth1" udp sport 4500 udp dport 4500 ct zone != 0 masquerade to :ip saddr . ip daddr map @natt_out']
        ci = [l.strip() for l in chain(r, "classify_in").strip().splitlines()]
        assert ci[0].startswith("udp dport 4500 ct zone set") and ci[2] == "udp sport 4500 udp dport != 4500 goto classify_in_natt"
        natt = [l.strip() for l in chain(r, "classify_in_natt").strip().splitlines()]
        assert natt == [
            "ip saddr . udp dport != @natt_in_k goto classify_in_vpn",
            "udp length > 16 @th,64,32 != 0 ct zone set ip saddr . @th,64,32 map @esp_zone accept",
            "udp length > 16 @th,64,32 != 0 meta mark & 0x10000000 == 0 goto queue_in",
            "goto steer_in"]
        assert chain(r, "steer_in").strip().splitlines()[1].strip() == \
            "udp sport 4500 udp dport != 4500 ct zone set ip saddr . udp dport map @natt_in accept"
    # The same rules in every mode (elements decide; a switch keeps live ports working), none
    # of the 4500 ones with IPsec off.
    assert N.render_fastpath(Config({"natt_ports": "preserve"}), "nft") == N.render_fastpath(Config({}), "nft")
    off = N.render_fastpath(Config({"ipsec_passthrough": "0"}), "nft")
    assert "classify_in_natt" not in off
    assert "nat_postrouting" in N.FASTPATH_CHAINS and "classify_in_natt" in N.FASTPATH_CHAINS


def test_natt_ops_and_policy_still_drops_distinct_port_flows():
    c = 'natt-port 192.168.1.11 203.0.113.2 14767'
    assert N.render_op(("add", "natt_out", ("192.168.1.11", "203.0.113.2"), 14767, c)) == \
        'add element ip passthrough natt_out { 192.168.1.11 . 203.0.113.2 comment "%s" : 14767 }' % c
    assert N.render_op(("add", "natt_in", ("203.0.113.2", 14767), 4108, c)) == \
        'add element ip passthrough natt_in { 203.0.113.2 . 14767 comment "%s" : 4108 }\n' \
        'add element ip passthrough natt_in_k { 203.0.113.2 . 14767 }' % c
    assert N.render_op(("del", "natt_in", ("203.0.113.2", 14767))) == \
        "delete element ip passthrough natt_in { 203.0.113.2 . 14767 }\n" \
        "delete element ip passthrough natt_in_k { 203.0.113.2 . 14767 }"
    assert N.render_op(("del", "natt_out", ("192.168.1.11", "203.0.113.2"))) == \
        "delete element ip passthrough natt_out { 192.168.1.11 . 203.0.113.2 }"
    # The forward hook sees a distinct-port flow with the server's port 4500 on it both ways
    # (before SNAT outbound, after its undoing inbound): "ipsec off" drops it.
    drops = N.render_policy(Config({"ipsec_passthrough": "0"}))
    assert "udp dport { 500, 4500 } counter drop" in drops and "udp sport { 500, 4500 } counter drop" in drops


def test_flowtables_read_from_nft_json_and_the_admin_warning():
    # `nft -j list flowtables` as nft 1.0.6 prints fw4's (one device prints as a string)
    data = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"flowtable": {"family": "inet", "name": "ft", "table": "fw4", "handle": 3, "hook": "ingress",
                           "prio": 0, "dev": ["eth0", "eth1"]}},
            {"flowtable": {"family": "ip", "name": "f2", "table": "t", "handle": 4, "hook": "ingress",
                           "prio": 0, "dev": "eth2"}},
            {"flowtable": "garbage"}, "garbage"]
    fts = N.flowtables_of(data)
    assert fts == [("inet", "fw4", "ft", ["eth0", "eth1"]), ("ip", "t", "f2", ["eth2"])]
    msg = N.flowtable_warning(fts)
    assert "inet fw4 ft (eth0 eth1)" in msg and "ip t f2 (eth2)" in msg, msg
    assert "flow_offloading=0" in msg and "conntrack zone" in msg, msg
    assert N.flowtable_warning([]) is None and N.flowtables_of(None) == []
