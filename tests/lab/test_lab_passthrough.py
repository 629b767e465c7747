"""The daemon in the namespace lab, with scapy-made traffic (issue: two LAN hosts, one server).

One lab for the module; every test sets the config it needs and uses SPIs / tunnel ids of its
own, so tests do not depend on each other's leftovers.
"""
import json
import re
import subprocess
import time

import pytest


from labutil import running_lab, with_options  # noqa: E402
from nat.mapping import NATT_PORT_FIRST, NATT_PORT_COUNT
from passthrough.lab.peers import wait_for
from passthrough.lab.topology import ROUTER_WAN_IP

pytestmark = pytest.mark.lab

DEFAULTS = dict(enabled="1", l2tp_passthrough="1", ipsec_passthrough="1", pptp_passthrough="1", natt_ports="auto",
                offload="auto")


@pytest.fixture(scope="module")
def lab():
    with running_lab("t") as run:
        yield run


@pytest.fixture
def fresh(lab):
    return with_options(lab, DEFAULTS)


def esp_args(lab, spi, count=20):
    return ["--server", lab.lab.server_ip(0), "--spi", hex(spi), "--count", count, "--interval", 0.01, "--wait", 0.5]


def zone_lines(lab, needle):
    return [l for l in lab.conntrack().splitlines() if needle in l and "zone=" in l]


def test_raw_esp_two_hosts_one_server_both_get_replies(fresh):
    res = fresh.clients("esp", [esp_args(fresh, 0x11000 + h) for h in range(2)])
    assert [r["replies"] for r in res] == [20, 20], res
    flows = [f for f in fresh.status()["flows"] if f["kind"] == "esp" and f["key_out"] in ("00011000", "00011001")]
    assert sorted(f["lan_ip"] for f in flows) == ["192.168.1.10", "192.168.1.11"]
    assert all(f["state"] == "up" and f["key"] == "%08x" % (int(f["key_out"], 16) + 0x1000) for f in flows), flows


def test_baseline_without_passthrough_second_host_starves(lab):
    """The problem this project solves: plain masquerade serves only one of two ESP hosts."""
    lab.stop_daemon()
    lab.nft("delete", "table", "ip", "passthrough", check=False)  # SIGTERM already removed it
    lab.nft("delete", "table", "inet", "passthrough_policy", check=False)
    subprocess.run(["ip", "netns", "exec", lab.lab.router, "conntrack", "-F"], capture_output=True)
    try:
        res = lab.clients("esp", [esp_args(lab, 0x12000 + h) for h in range(2)])
        assert sorted(r["replies"] for r in res) == [0, 20], res
    finally:
        subprocess.run(["ip", "netns", "exec", lab.lab.router, "conntrack", "-F"], capture_output=True)
        lab.start_daemon()


def test_two_hosts_share_source_port_500_and_4500(fresh):
    """natt_ports 'preserve': both hosts keep 500 and 4500, at the server too."""
    assert fresh.set_options(natt_ports="preserve")["ok"]
    srv = fresh.lab.server_ip(0)
    ike = fresh.clients("ike", [["--server", srv, "--spi", hex(0x13000 + h), "--count", 5, "--wait", 0.5]
                                for h in range(2)])
    natt = fresh.clients("ike", [["--server", srv, "--dport", 4500, "--spi", hex(0x13100 + h), "--count", 5,
                                  "--wait", 0.5] for h in range(2)])
    esp_udp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x13200 + h), "--count", 10, "--wait", 0.5,
                                          "--keepalive"] for h in range(2)])
    assert [r["replies"] for r in ike + natt + esp_udp] == [5, 5, 5, 5, 10, 10], ike + natt + esp_udp
    for port in ("500", "4500"):
        lines = zone_lines(fresh, "sport=%s dport=%s src=%s dst=203.0.113.1 sport=%s dport=%s" % (port, port, srv, port, port))
        zones = set(w for l in lines for w in l.split() if w.startswith("zone="))
        assert len(zones) == 2, "port %s not preserved for both hosts:\n%s" % (port, fresh.conntrack())
    kinds = set((f["kind"], f["lan_ip"]) for f in fresh.status()["flows"] if f["remote_ip"] == srv)
    assert {("ike", "192.168.1.10"), ("ike", "192.168.1.11"), ("natt", "192.168.1.10"), ("natt", "192.168.1.11")} <= kinds
    assert fresh.server_peers(srv, 4500) == {(ROUTER_WAN_IP, 4500)}
    assert fresh.server_peers(srv, 500) == {(ROUTER_WAN_IP, 500)}


def natt_lines(lab, srv):
    """Conntrack lines of LAN hosts' UDP 4500 -> srv:4500 connections."""
    return [l for l in lab.conntrack().splitlines() if " dst=%s sport=4500 dport=4500 " % srv in l]


def test_natt_ports_distinct_second_host_gets_its_own_port(fresh):
    """natt_ports 'distinct': the first host keeps 4500 towards a server, the second appears
    there with a port of its own for its UDP 4500 flow; IKE and ESP-in-UDP replies reach each
    host (BPF offload on where it loads, then on the nft path alone); UDP 500 stays shared. A
    daemon killed and restarted re-adopts the port; IPsec off cuts both flows."""
    assert fresh.set_options(natt_ports="distinct")["ok"]
    assert fresh.status()["summary"]["natt_ports"]["effective"] == "distinct"
    srv = fresh.lab.server_ip(1)  # no other test talks NAT-T to this one
    # IKE_SA_INIT on 500, then IKE after the non-ESP marker on 4500: host 1 first, so it is
    # the one that keeps 4500.
    for h in range(2):
        r = fresh.client(h, "ike", "--server", srv, "--spi", hex(0x19000 + h), "--count", 3, "--wait", 0.3)
        assert r["replies"] == 3, r
        r = fresh.client(h, "ike", "--server", srv, "--dport", 4500, "--spi", hex(0x19000 + h), "--count", 5,
                         "--wait", 0.3)
        assert r["replies"] == 5, (h, r)
    esp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x19200 + h), "--count", 20, "--wait", 0.5,
                                      "--keepalive"] for h in range(2)])
    assert [r["replies"] for r in esp] == [20, 20], esp
    seen = wait_for(lambda: fresh.server_peers(srv, 4500) if len(fresh.server_peers(srv, 4500)) >= 2 else None,
                    5, what="two NAT-T peers at the server")
    ports = sorted(p for a, p in seen)
    assert all(a == ROUTER_WAN_IP for a, p in seen) and len(ports) == 2 and ports[0] == 4500, seen
    distinct = ports[1]
    assert NATT_PORT_FIRST <= distinct < NATT_PORT_FIRST + NATT_PORT_COUNT, seen
    assert fresh.server_peers(srv, 500) == {(ROUTER_WAN_IP, 500)}  # IKE on 500 is never translated
    # The router: the second host's 4500 flow translated to that port in its own zone.
    lines = natt_lines(fresh, srv)
    assert any(l.startswith("udp") and "src=192.168.1.11 " in l and "dport=%d " % distinct in l for l in lines), lines
    assert any("src=192.168.1.10 " in l and l.split("src=%s dst=%s sport=4500 dport=" % (srv, ROUTER_WAN_IP))[1]
               .startswith("4500 ") for l in lines), lines
    flows = [f for f in fresh.status()["flows"] if f["remote_ip"] == srv and f["kind"] in ("ike", "natt")
             and f["remote_port"] == 4500]
    got = sorted((f["kind"], f["lan_ip"], f["lan_port"], f["wan_port"], f["state"] if f["kind"] == "natt" else "")
                 for f in flows)
    assert got == [("ike", "192.168.1.10", 4500, 4500, ""), ("ike", "192.168.1.11", 4500, distinct, ""),
                   ("natt", "192.168.1.10", 4500, 4500, "up"), ("natt", "192.168.1.11", 4500, distinct, "up")], got
    # A stopped daemon takes its table (and the ports' elements) with it; the conntrack entries
    # stay. A new one learns their ports from conntrack, even with the second host first now.
    fresh.stop_daemon()
    fresh.start_daemon()
    r = fresh.client(1, "natt-esp", "--server", srv, "--spi", hex(0x19300), "--count", 10, "--wait", 0.5)
    assert r["replies"] == 10, r
    esp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x19200 + h), "--count", 10, "--wait", 0.5]
                                     for h in range(2)])
    assert [r["replies"] for r in esp] == [10, 10], esp
    wan = dict((f["lan_ip"], f["wan_port"]) for f in fresh.status()["flows"] if f["remote_ip"] == srv)
    assert wan == {"192.168.1.10": 4500, "192.168.1.11": distinct}, wan
    assert fresh.server_peers(srv, 4500) == seen
    # kill -9 and a new daemon: the port is re-adopted from the kernel's map elements and the
    # tunnels keep working with the same ports at the server.
    fresh.kill_daemon()
    fresh.start_daemon()
    summary = fresh.status()["summary"]["natt_ports"]
    assert summary["distinct_in_use"] == 1 and summary["effective"] == "distinct", summary
    esp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x19200 + h), "--count", 10, "--wait", 0.5]
                                     for h in range(2)])
    assert [r["replies"] for r in esp] == [10, 10], esp
    wan = dict((f["lan_ip"], f["wan_port"]) for f in fresh.status()["flows"] if f["remote_ip"] == srv and f["kind"] == "natt")
    assert wan == {"192.168.1.10": 4500, "192.168.1.11": distinct}, wan
    assert fresh.server_peers(srv, 4500) == seen
    # Every packet through classify/steer and conntrack (no BPF program carrying data).
    assert fresh.set_options(offload="off")["ok"]
    esp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x19200 + h), "--count", 10, "--wait", 0.5]
                                     for h in range(2)])
    assert [r["replies"] for r in esp] == [10, 10], esp
    assert fresh.server_peers(srv, 4500) == seen
    # IPsec off: the policy drops and the conntrack cut match the server's port 4500, so the
    # distinct-port flow goes like the other; its port is given up.
    reply = fresh.set_options(ipsec_passthrough="0")
    assert reply["ok"] and reply["switched_off"] == ["ipsec"], reply
    assert not natt_lines(fresh, srv), fresh.conntrack()
    assert fresh.status()["summary"]["natt_ports"]["distinct_in_use"] == 0
    esp = fresh.clients("natt-esp", [["--server", srv, "--spi", hex(0x19200 + h), "--count", 5, "--wait", 0.5]
                                     for h in range(2)])
    assert [r["replies"] for r in esp] == [0, 0], esp


def test_two_hosts_share_l2tp_port_1701(fresh):
    srv = fresh.lab.server_ip(0)
    res = fresh.clients("l2tp", [["--server", srv, "--tid", 300 + h, "--count", 10, "--wait", 0.5] for h in range(2)])
    assert [r["replies"] for r in res] == [10, 10], res
    lines = zone_lines(fresh, "sport=1701 dport=1701 src=%s dst=203.0.113.1 sport=1701 dport=1701" % srv)
    assert len(set(w for l in lines for w in l.split() if w.startswith("zone="))) == 2, fresh.conntrack()
    tunnels = {f["key"]: f for f in fresh.status()["flows"] if f["kind"] == "l2tp"}
    assert tunnels["300"]["lan_ip"] == "192.168.1.10" and tunnels["301"]["lan_ip"] == "192.168.1.11"


def test_lns_answering_from_another_port(fresh):
    """RFC 2661 §8.1: the LNS may answer from a port other than 1701; accepted by tunnel id."""
    srv = fresh.lab.server_ip(1)  # this responder answers from 1702
    res = fresh.clients("l2tp", [["--server", srv, "--tid", 400 + h, "--count", 10, "--wait", 0.5] for h in range(2)])
    assert [(r["replies"], r["peer_port"]) for r in res] == [(10, 1702), (10, 1702)], res
    tunnels = {f["key"]: f for f in fresh.status()["flows"] if f["kind"] == "l2tp"}
    assert tunnels["400"]["remote_port"] == 1702 and tunnels["401"]["remote_port"] == 1702


def _replies(proc):
    out = []
    for line in proc.stdout:
        obj = json.loads(line)
        out.append(obj)
    proc.wait(10)
    return out


def test_l2tp_off_blocks_new_and_cuts_live_within_1s_then_on_again(fresh):
    srv = fresh.lab.server_ip(0)
    live = fresh.client_stream(0, "l2tp", "--server", srv, "--tid", 500, "--duration", 5, "--interval", 0.02,
                               "--wait", 0.2)
    first = json.loads(live.stdout.readline())
    assert first.get("event") == "tunnel", first
    time.sleep(1.5)  # let the tunnel carry data for a while (timing of the test, not a wait on state)
    t_off = time.time()
    reply = fresh.set_options(l2tp_passthrough="0")
    assert reply["ok"] and reply["switched_off"] == ["l2tp"], reply
    events = _replies(live)
    replies = [e for e in events if e.get("event") == "reply"]
    before = [e for e in replies if e["t"] < t_off]
    after = [e for e in replies if e["t"] >= t_off + 1.0]
    assert len(before) > 20, "tunnel carried no data before the toggle"
    assert after == [], "L2TP data still flowing %.2fs after l2tp_passthrough=0" % (after[0]["t"] - t_off)
    assert not zone_lines(fresh, "dport=1701"), "L2TP conntrack entries survived:\n" + fresh.conntrack()
    new = fresh.client(1, "l2tp", "--server", srv, "--tid", 501, "--count", 3, "--setup-timeout", 2)
    assert new.get("error") == "no SCCRP" and new["replies"] == 0, new
    # ESP is not affected by the L2TP toggle.
    assert fresh.client(1, "esp", *esp_args(fresh, 0x15000))["replies"] == 20
    reply = fresh.set_options(l2tp_passthrough="1")
    assert reply["ok"], reply
    again = fresh.clients("l2tp", [["--server", srv, "--tid", 510 + h, "--count", 5, "--wait", 0.5] for h in range(2)])
    assert [r["replies"] for r in again] == [5, 5], again


def test_ipsec_off_blocks_esp_and_ike(fresh):
    assert fresh.set_options(ipsec_passthrough="0")["ok"]
    res = fresh.clients("esp", [esp_args(fresh, 0x16000 + h, count=5) for h in range(2)])
    ike = fresh.client(0, "ike", "--server", fresh.lab.server_ip(0), "--spi", hex(0x16100), "--count", 3)
    assert [r["replies"] for r in res] == [0, 0] and ike["replies"] == 0, (res, ike)
    assert fresh.set_options(ipsec_passthrough="1")["ok"]
    res = fresh.clients("esp", [esp_args(fresh, 0x16200 + h, count=5) for h in range(2)])
    assert [r["replies"] for r in res] == [5, 5], res


def test_pptp_toggle_and_helper(fresh):
    srv = fresh.lab.server_ip(0)
    ok = fresh.client(0, "pptp", "--server", srv, "--count", 2)
    assert ok["replies"] == 2, ok
    assert any("dport=1723" in l and "helper=pptp" in l for l in fresh.conntrack().splitlines()), fresh.conntrack()
    assert fresh.set_options(pptp_passthrough="0")["ok"]
    off = fresh.client(1, "pptp", "--server", srv, "--count", 1, "--setup-timeout", 1)
    assert off["replies"] == 0 and off["error"], off
    assert not [l for l in fresh.conntrack().splitlines() if "dport=1723" in l and "ESTABLISHED" in l]
    assert fresh.set_options(pptp_passthrough="1")["ok"]
    assert fresh.client(1, "pptp", "--server", srv, "--count", 1)["replies"] == 1


def test_bad_config_value_keeps_last_good(fresh):
    reply = fresh.set_options(l2tp_passthrough="maybe")
    assert not reply["ok"] and "l2tp_passthrough" in reply["error"], reply
    fresh.write_config(l2tp_passthrough="1")
    res = fresh.client(0, "l2tp", "--server", fresh.lab.server_ip(0), "--tid", 600, "--count", 3)
    assert res["replies"] == 3, res
    assert "reload refused" in fresh.log_tail(50)


def test_heartbeat_element_is_renewed_while_the_daemon_runs(fresh):
    """Queueing is gated by the daemon's heartbeat element (set `alive`, a 5 s timeout). Adding
    an element that exists does not renew its timeout, so a daemon that only re-adds it leaves
    gaps in which nothing is queued (a new tunnel's first packets pass unseen): it must be
    there, with most of its timeout left, at every look for 8 s."""
    left = []
    for _ in range(16):
        out = subprocess.run(["ip", "netns", "exec", fresh.lab.router, "nft", "list", "set", "ip", "passthrough",
                              "alive"], capture_output=True, text=True, check=True).stdout
        m = re.search(r"expires (?:(\d+)s)?(?:(\d+)ms)?", out)
        assert m, "heartbeat element missing: %s" % out
        left.append(int(m.group(1) or 0) + int(m.group(2) or 0) / 1000.0)
        time.sleep(0.5)
    assert min(left) > 2.5, "heartbeat not renewed every second: seconds left %s" % left


def test_daemon_killed_established_flows_continue_policy_holds(fresh):
    srv = fresh.lab.server_ip(0)
    # Establish ESP for both hosts and L2TP off, then kill -9 the daemon.
    warm = fresh.clients("esp", [esp_args(fresh, 0x17000 + h, count=5) for h in range(2)])
    assert [r["replies"] for r in warm] == [5, 5]
    assert fresh.set_options(l2tp_passthrough="0")["ok"]
    fresh.kill_daemon()
    res = fresh.clients("esp", [esp_args(fresh, 0x17000 + h, count=20) for h in range(2)])
    assert [r["replies"] for r in res] == [20, 20], "established ESP broke without the daemon: %s" % res
    blocked = fresh.client(0, "l2tp", "--server", srv, "--tid", 700, "--count", 3, "--setup-timeout", 2)
    assert blocked["replies"] == 0 and blocked.get("error") == "no SCCRP", blocked
    # A new IKE SA without a daemon: its SPI is unknown to the kernel; once the daemon's
    # heartbeat has timed out nothing is queued and the kernel-learned fallback (remote, ports)
    # -> zone routes the replies, i.e. plain-NAT behaviour (unambiguous here: no other host
    # used this source port).
    fresh.wait_heartbeat_gone()
    single = fresh.client(0, "ike", "--server", srv, "--sport", 40500, "--spi", hex(0x17100), "--count", 3)
    assert single["replies"] == 3, single
    # Restart: the daemon re-adopts the flows the kernel kept.
    fresh.start_daemon()
    keys = set((f["kind"], f["key_out"]) for f in fresh.status()["flows"])
    assert ("esp", "00017000") in keys and ("esp", "00017001") in keys, keys
    res = fresh.clients("esp", [esp_args(fresh, 0x17000 + h, count=10) for h in range(2)])
    assert [r["replies"] for r in res] == [10, 10], res


def test_status_json_fields(fresh):
    fresh.clients("esp", [esp_args(fresh, 0x18000 + h, count=3) for h in range(2)])
    out = subprocess.run(["python3", "-m", "passthrough.cli", "status", "--json", "--socket", fresh.control],
                         capture_output=True, text=True, check=True).stdout
    rows = [json.loads(l) for l in out.splitlines()]
    assert rows, "no flows"
    for r in rows:
        for k in ("kind", "lan_ip", "lan_port", "wan_port", "remote_ip", "remote_port", "key", "age", "packets"):
            assert k in r, (k, r)
        assert r["kind"] in ("ike", "esp", "natt", "l2tp")
