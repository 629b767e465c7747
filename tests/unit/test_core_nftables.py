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
    cfg = Config({"queue_num": "5"})
    assert "queue flags bypass to 5" in N.render_fastpath(cfg, "nft")
    ipt = N.render_fastpath(cfg, "iptables")
    assert "queue" not in ipt.replace("queue_", "") and "meta mark set meta mark | 0x10000000 return" in ipt
    fan = N.render_fastpath(Config({"queue_num": "5", "queue_count": "3"}), "nft")
    assert "queue flags bypass,fanout to 5-7" in fan


def test_toggles_remove_classify_rules():
    r = N.render_fastpath(Config({"l2tp_passthrough": "0"}), "nft")
    classify_in = r.split("chain classify_in {")[1].split("}")[0]
    assert "1701" not in classify_in and "@ike_zone" in classify_in


def test_queue_limits_from_config():
    r = N.render_fastpath(Config({"queue_limit_source": "50", "queue_limit_total": "400"}), "nft")
    queue_in = r.split("chain queue_in {")[1].split("\n\t}")[0]
    assert "limit rate over 50/second burst 100 packets" in queue_in
    assert "limit rate over 400/second burst 800 packets accept" in queue_in
    assert "limit rate over 100/second" in N.render_fastpath(Config({}), "nft")


def test_udp_timeout_and_devices():
    r = N.render_fastpath(Config({"udp_timeout": "300", "lan_device": "lan0", "wan_device": "eth1"}), "nft")
    assert "unreplied : 300, replied : 300" in r
    assert 'iifname "lan0" jump classify_out' in r and 'iifname "eth1" jump classify_in' in r


def test_classify_tests_key_sets_not_maps():
    """Kernels < 6.5 reject a lookup on a map that ignores its value: classify uses the twins."""
    r = N.render_fastpath(Config({}), "nft")
    for chain in ("classify_out", "classify_in"):
        body = r.split("chain %s {" % chain)[1].split("}")[0]
        for name in ("lan_zone", "ike_zone", "esp_zone", "l2tp_zone"):
            assert "!= @%s " % name not in body, (chain, name)


def test_render_ops():
    assert N.render_op(("add", "esp_zone", ("203.0.113.2", 0x2001), 4097, "esp x 1 2 3")) == \
        'add element ip passthrough esp_zone { 203.0.113.2 . 0x00002001 comment "esp x 1 2 3" : 4097 }\n' \
        'add element ip passthrough esp_zone_k { 203.0.113.2 . 0x00002001 }'
    assert N.render_op(("del", "ike_zone", ("203.0.113.2", 0xAB))) == \
        "delete element ip passthrough ike_zone { 203.0.113.2 . 0x00000000000000ab }\n" \
        "delete element ip passthrough ike_zone_k { 203.0.113.2 . 0x00000000000000ab }"
    assert N.render_op(("add", "esp_out", ("192.168.1.10", 5), None)) == \
        "add element ip passthrough esp_out { 192.168.1.10 . 0x00000005 }"
    assert N.render_op(("add", "zone_lan", (4097,), "192.168.1.10")) == \
        "add element ip passthrough zone_lan { 4097 : 192.168.1.10 }"
