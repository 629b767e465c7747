"""passthrough on a QEMU router built from Debian packages (kernel 6.1 with nft_queue, ESP, L2TP).

The host lab cannot exercise the nft `queue` backend (CONFIG_NFT_QUEUE is off on this machine);
the guest kernel has it. The guest's 6.1 kernel is also the older-kernel check of the BPF offload
(the host runs 6.18): the package's offload.o must pass its verifier and carry data there. The daemon runs under its init script (/etc/init.d/passthrough, procd
shim) and is configured through UCI (uci shim) as on OpenWrt. Each test uses SPIs / tunnel ids
of its own.
"""
import statistics
import time

import pytest


pytestmark = pytest.mark.qemu

SERVER = "203.0.113.2"
SERVER2 = "203.0.113.3"


def esp(spi, count=20, server=SERVER, interval=0.02, wait=1.0):
    return ["--server", server, "--spi", hex(spi), "--count", count, "--interval", interval, "--wait", wait]


def l2tp(tid, count=10, server=SERVER, interval=0.02, wait=1.0):
    return ["--server", server, "--tid", tid, "--count", count, "--interval", interval, "--wait", wait,
            "--setup-timeout", 5]


def test_agent_latency_and_guest_kernel(qlab):
    g = qlab.guest
    times = []
    for _ in range(20):
        t = time.time()
        assert g.run("true").rc == 0
        times.append((time.time() - t) * 1000)
    qlab.results["agent_ms"] = {"median": round(statistics.median(times), 1), "max": round(max(times), 1), "n": len(times)}
    assert statistics.median(times) < 1000, times
    assert g.run("uname -r").stdout.startswith("6.1.")
    mods = qlab.sh("cat /proc/modules")
    for m in ("nft_queue", "nfnetlink_queue", "nf_conntrack", "esp4", "l2tp_ppp", "ppp_generic", "xfrm_user"):
        assert m + " " in mods, "module %s not loaded; failed: %s" % (m, g.run("cat /run/pt-modules-failed").stdout)


def test_daemon_runs_under_init_script_with_nft_queue_backend(qlab):
    g = qlab.guest
    assert g.run("/etc/init.d/passthrough enabled").rc == 0, "init script not enabled (no /etc/rc.d link)"
    st = g.run("/etc/init.d/passthrough status")
    assert st.rc == 0 and "running" in st.stdout, st
    out = qlab.sh("passthrough status")
    assert "backend nft" in out, out
    ruleset = qlab.sh("nft list table ip passthrough")
    assert "queue flags bypass to 7100" in ruleset, ruleset
    assert "meta mark" not in ruleset.split("chain classify_out")[1].split("}")[0]  # not the iptables backend
    assert g.run("command -v iptables").rc != 0  # the nft path is the only one here
    cmdline = qlab.sh("tr '\\0' ' ' < /proc/%d/cmdline" % qlab.daemon_pid())
    assert "passthrough" in cmdline and " run " in cmdline, cmdline


def test_bpf_offload_loads_on_the_6_1_kernel_and_hangs_on_both_ports(qlab):
    """The ipk's /usr/lib/passthrough/offload.o (host clang, bpfel, stripped) passes the verifier
    of Debian's 6.1 kernel: with the shipped config (option offload unset: 'auto') the daemon
    reports the offload active, and tc shows its direct-action filter (handle 0x7074, JIT-compiled)
    on tc ingress of the LAN and of the WAN device (clsact from sch_ingress, cls_bpf)."""
    off = qlab.offload()
    assert off.get("active") is True, "%s\n%s" % (off, qlab.log_tail())
    assert off["object"] == "/usr/lib/passthrough/offload.o", off
    assert set(off["program"]) == {"carried", "miss", "policy", "fib", "other_port"}, off
    assert "BPF offload on: /usr/lib/passthrough/offload.o" in qlab.sh("cat /var/log/passthrough.log")
    for dev in ("br-lan", "wan"):
        tc = qlab.sh("tc filter show dev %s ingress" % dev)
        assert " bpf " in tc and "handle 0x7074 offload" in tc and "direct-action" in tc and "jited" in tc, (dev, tc)
    mods = qlab.sh("cat /proc/modules")
    assert "cls_bpf " in mods and "sch_ingress " in mods, mods


def test_raw_esp_two_lan_hosts_one_server_both_get_replies(qlab):
    res = qlab.clients("esp", [(0, esp(0x21000)), (1, esp(0x21001))])
    qlab.results["esp_two_hosts_replies"] = [r["replies"] for r in res]
    assert [r["replies"] for r in res] == [20, 20], res
    flows = [f for f in qlab.status() if f["kind"] == "esp" and f.get("key_out") in ("00021000", "00021001")]
    assert sorted(f["lan_ip"] for f in flows) == ["192.168.1.10", "192.168.1.11"], flows
    assert all(f["state"] == "up" and f["key"] == "%08x" % (int(f["key_out"], 16) + 0x1000) for f in flows), flows
    zones = qlab.sh("conntrack -L -p esp 2>/dev/null")
    assert zones.count("zone=") >= 2, zones


def test_l2tp_two_hosts_same_server_keep_port_1701(qlab):
    res = qlab.clients("l2tp", [(0, l2tp(4301)), (1, l2tp(4302))])
    qlab.results["l2tp_two_hosts_replies"] = [r["replies"] for r in res]
    assert [r.get("error") for r in res] == [None, None], res
    assert [r["replies"] for r in res] == [10, 10], res
    assert [r["peer_port"] for r in res] == [1701, 1701]
    flows = [f for f in qlab.status() if f["kind"] == "l2tp" and f["remote_ip"] == SERVER]
    by_host = {f["lan_ip"]: f for f in flows}
    assert set(by_host) >= {"192.168.1.10", "192.168.1.11"}, flows
    assert all(by_host[h]["wan_port"] == 1701 for h in ("192.168.1.10", "192.168.1.11")), flows


def test_l2tp_lns_answering_from_another_port(qlab):
    res = qlab.client(0, "l2tp", *l2tp(4303, server=SERVER2))
    assert res.get("error") is None and res["peer_port"] == 1702 and res["replies"] == 10, res


def test_l2tp_off_via_uci_and_reload_blocks_new_tunnels_on_again_works(qlab):
    g = qlab.guest
    try:
        qlab.uci_set(l2tp_passthrough=0)
        t = time.time()
        out = qlab.sh("reload_config")  # LuCI's apply: uci commit + reload_config -> init script reload
        qlab.results["reload_off_ms"] = round((time.time() - t) * 1000)
        assert "passthrough reload" in out, out
        policy = qlab.sh("nft list table inet passthrough_policy")
        assert "l2tp_passthrough off" in policy, policy
        res = qlab.client(0, "l2tp", *l2tp(4311, count=5))
        assert res["replies"] == 0, res
        esp_res = qlab.client(1, "esp", *esp(0x21100, count=10))  # other families unaffected
        assert esp_res["replies"] == 10, esp_res
    finally:
        qlab.uci_set(l2tp_passthrough=1)
        t = time.time()
        r = g.run("/etc/init.d/passthrough reload")
        qlab.results["reload_on_ms"] = round((time.time() - t) * 1000)
    assert r.rc == 0, r
    assert "l2tp_passthrough off" not in qlab.sh("nft list table inet passthrough_policy")
    res = qlab.client(0, "l2tp", *l2tp(4312))
    assert res.get("error") is None and res["replies"] == 10, res


def test_kill9_daemon_established_esp_keeps_flowing_then_respawn_adopts(qlab):
    first = qlab.client(0, "esp", *esp(0x21200, count=10))
    assert first["replies"] == 10, first
    pid = qlab.daemon_pid()
    assert pid
    t_kill = time.time()
    qlab.sh("kill -9 %d" % pid)
    qlab.wait_for(lambda: qlab.guest.run("kill -0 %d" % pid).rc != 0, 10, what="daemon gone")
    res = qlab.client(0, "esp", *esp(0x21200, count=20, interval=0.01, wait=0.5))
    dead_for = time.time() - t_kill
    still_dead = qlab.daemon_pid() is None
    qlab.results["kill9"] = {"replies_while_dead": res["replies"], "checked_dead_after_s": round(dead_for, 2),
                        "still_dead": still_dead}
    assert res["replies"] == 20, res
    assert still_dead, "the procd shim respawned the daemon before the check (%.1f s): inconclusive" % dead_for
    # procd respawn (after respawn_timeout): the new daemon re-adopts the learned keys from the kernel maps.
    new_pid = qlab.wait_daemon(timeout=60, not_pid=pid)
    qlab.results["kill9"]["respawned_after_s"] = round(time.time() - t_kill, 1)
    assert new_pid != pid
    flows = [f for f in qlab.status() if f["kind"] == "esp" and f.get("key_out") == "00021200"]
    assert flows and flows[0]["lan_ip"] == "192.168.1.10", qlab.status()
    again = qlab.client(0, "esp", *esp(0x21200, count=10))
    assert again["replies"] == 10, again


def test_bad_uci_value_refused_last_good_config_kept(qlab):
    g = qlab.guest
    pid = qlab.daemon_pid()
    try:
        qlab.uci_set(udp_timeout=5)  # below the 120 s minimum: refused
        r = g.run("/etc/init.d/passthrough reload")
        assert r.rc != 0 and "udp_timeout" in (r.stdout + r.stderr), r
        assert qlab.daemon_pid() == pid  # not restarted
        res = qlab.client(1, "l2tp", *l2tp(4321, count=5))
        assert res.get("error") is None and res["replies"] == 5, res
        assert "vpn-udp" in qlab.sh("nft list table ip passthrough") and "180" in qlab.sh(
            "nft list ct timeout ip passthrough vpn-udp")
    finally:
        qlab.uci_set(udp_timeout=180)
        assert g.run("/etc/init.d/passthrough reload").rc == 0


def test_opkg_postinst_on_the_live_router_restarts_the_service(qlab):
    """What `opkg install` runs after unpacking (IPKG_INSTROOT empty): enable + restart. The new
    daemon serves a host that starts ESP after the restart."""
    g = qlab.guest
    pid = qlab.daemon_pid()
    order = qlab.hosts_by_zone()  # the host with the lowest zone gets the same zone again
    r = g.run("sh /usr/lib/opkg/info/passthrough.postinst", timeout=60)
    assert r.rc == 0, r
    new = qlab.wait_daemon(timeout=60, not_pid=pid)
    assert new != pid
    assert "backend nft" in qlab.sh("passthrough status")
    first = order[0] if order else 0
    res = qlab.client(first, "esp", *esp(0x21300, count=10))
    assert res["replies"] == 10, "%s\n%s" % (res, qlab.dump())


def test_restart_keeps_host_zones_no_stale_conntrack_clash(qlab):
    """Regression (found here first): a clean restart used to renumber the host zones while the
    conntrack entries of the old zones stayed, so a host given another host's old zone collided
    with that host's ESP entry (no unique NAT tuple) until it timed out. Deterministic order: after
    the restart, the host that had the higher zone starts first."""
    esp_both = qlab.clients("esp", [(0, esp(0x21400, count=5)), (1, esp(0x21401, count=5))])
    assert [r["replies"] for r in esp_both] == [5, 5], esp_both
    zones_before = qlab.sh("passthrough status").splitlines()[0].split("hosts ", 1)[1]
    order = qlab.hosts_by_zone()
    pid = qlab.daemon_pid()
    assert qlab.guest.run("/etc/init.d/passthrough restart", timeout=60).rc == 0
    qlab.wait_daemon(timeout=60, not_pid=pid)
    late = order[-1]
    res = qlab.client(late, "esp", *esp(0x21410 + late, count=10))
    other = qlab.client(1 - late, "esp", *esp(0x21420 + late, count=10))
    assert [res["replies"], other["replies"]] == [10, 10], "%s %s\n%s" % (res, other, qlab.dump())
    zones_after = qlab.sh("passthrough status").splitlines()[0].split("hosts ", 1)[1]
    assert zones_after == zones_before


def test_bpf_offload_carries_natt_esp_and_l2tp_data_of_two_hosts_sharing_ports(qlab):
    """Two LAN hosts to one server with the same ports (4500, 1701) and raw ESP, one kind after
    the other: once conntrack holds replied entries the daemon puts the flows in the program's
    map, and their data goes from tc ingress of one port straight to the other, NATed, and back
    demultiplexed by ESP SPI / L2TP tunnel id. Every packet of each host gets its own reply (a
    mix-up between the hosts would lose replies), and the program's 'carried' counter grows by at
    least a quarter of each phase's packets (on the nft path alone it would not move)."""
    assert qlab.offload().get("active"), qlab.offload()
    n = 80  # 4 s per phase: the daemon offloads a flow within about a second of its first reply
    carried = {}

    def phase(name, kind, per_host):
        c0 = qlab.carried()
        res = qlab.clients(kind, per_host, timeout=120)
        carried[name] = qlab.carried() - c0
        return res

    ike = qlab.clients("ike", [(h, ["--server", SERVER, "--dport", 4500, "--spi", hex(0x21600 + h), "--count", 3,
                                    "--wait", 0.5]) for h in (0, 1)])
    assert [r["replies"] for r in ike] == [3, 3], ike
    natt = phase("natt", "natt-esp", [(h, ["--server", SERVER, "--spi", hex(0x21610 + h), "--count", n, "--interval",
                                           0.05, "--wait", 1.0, "--keepalive"]) for h in (0, 1)])
    raw = phase("esp", "esp", [(h, esp(0x21620 + h, count=n, interval=0.05)) for h in (0, 1)])
    l2 = phase("l2tp", "l2tp", [(h, l2tp(4341 + h, count=n, interval=0.05)) for h in (0, 1)])
    after = qlab.offload()
    qlab.results["offload_carried"] = dict(carried, per_phase_sent=4 * n, entries=after.get("entries"),
                                           pairs=after.get("pairs"), program=after.get("program"))
    assert [r["replies"] for r in natt + raw + l2] == [n] * 6, (natt, raw, l2)
    assert [r["peer_port"] for r in l2] == [1701, 1701], l2
    # 4n packets per phase (n per host each way); measured here: 85-97 % of them carried
    assert all(carried[k] >= n for k in ("natt", "esp", "l2tp")), "%s\n%s\n%s" % (carried, after, qlab.dump())
    assert after["entries"] > 0 and after["pairs"] >= 6, after
    natt_keys = [f for f in qlab.status() if f["kind"] == "natt" and f.get("key_out") in ("00021610", "00021611")]
    assert sorted((f["lan_ip"], f["wan_port"]) for f in natt_keys) == [("192.168.1.10", 4500), ("192.168.1.11", 4500)]


def test_offload_off_detaches_the_program_and_data_stays_on_the_nft_path(qlab):
    """option offload 'off' + reload: the filters leave both ports (tc shows none), the summary
    says why, data still flows (nft path); back to 'auto': attached again and carrying."""
    g = qlab.guest
    try:
        qlab.uci_set(offload="off")
        out = qlab.sh("reload_config")
        assert "passthrough reload" in out, out
        off = qlab.offload()
        assert off["active"] is False and "off" in off["note"], off
        for dev in ("br-lan", "wan"):
            tc = qlab.sh("tc filter show dev %s ingress" % dev)
            assert "0x7074" not in tc and "bpf" not in tc, (dev, tc)
        res = qlab.client(0, "esp", *esp(0x21630, count=20))
        assert res["replies"] == 20, res
    finally:
        qlab.uci_set(offload="auto")
        r = g.run("/etc/init.d/passthrough reload")
    assert r.rc == 0, r
    assert qlab.offload()["active"] is True, qlab.offload()
    for dev in ("br-lan", "wan"):
        assert "handle 0x7074 offload" in qlab.sh("tc filter show dev %s ingress" % dev), dev
    c0 = qlab.carried()
    res = qlab.client(1, "esp", *esp(0x21631, count=60, interval=0.05))
    assert res["replies"] == 60 and qlab.carried() > c0, (res, qlab.offload())


def test_real_l2tp_ipsec_client_kernel_ipsec_xl2tpd_pppd(qlab):
    """A complete L2TP/IPsec client in a guest namespace behind the router (192.168.1.20: charon
    with kernel IPsec, IKEv1 PSK, transport mode, NAT-T; xl2tpd LAC; pppd over kernel L2TP) and
    its server on the WAN side (203.0.113.20): PPP comes up and carries traffic, passthrough
    tracked the IKE SA and the ESP-in-UDP SA with the ports kept (4500 -> 4500), and once the
    daemon has offloaded that SA its packets (kernel ESP-in-UDP, L2TP and PPP inside) go through
    the BPF program: a ping over PPP moves the 'carried' counter by one per packet each way."""
    g = qlab.guest
    try:
        t = time.time()
        r = g.run("pt-vpnlab up", timeout=180)
        qlab.results["l2tp_ipsec_real_client_up_s"] = round(time.time() - t, 1)
        assert r.rc == 0, "%r\n%s" % (r, qlab.dump())
        ping = g.run("ip netns exec c1 ping -c 3 -W 3 10.99.0.1", timeout=30)
        assert ping.rc == 0 and " 0% packet loss" in ping.stdout, ping
        sas = g.run("pt-vpnlab status").stdout
        assert "TRANSPORT-in-UDP" in sas and "ESTABLISHED, IKEv1" in sas, sas
        flows = [f for f in qlab.status() if f["lan_ip"] == "192.168.1.20"]
        kinds = {f["kind"]: f for f in flows}
        assert "ike" in kinds and "natt" in kinds, flows
        assert kinds["natt"]["state"] == "up" and kinds["natt"]["lan_port"] == 4500 and kinds["natt"]["wan_port"] == 4500, flows
        assert kinds["natt"]["remote_ip"] == "203.0.113.20"

        def ping_carried():
            c0 = qlab.carried()
            p = g.run("ip netns exec c1 ping -c 3 -i 0.2 -W 3 10.99.0.1", timeout=30)
            return p.rc == 0 and qlab.carried() - c0 >= 6

        t = time.time()
        qlab.wait_for(ping_carried, 40, interval=0.5, what="the real client's pings carried by the BPF offload")
        qlab.results["l2tp_ipsec_real_client_offloaded_after_s"] = round(time.time() - t, 1)
    finally:
        g.run("pt-vpnlab down", timeout=60)
