"""passthrough on the QEMU router: OpenWrt's userspace (procd, ubus, netifd, fw4, logd, opkg)
on Debian's 6.1 kernel (nft_queue, ESP, L2TP).

The host lab cannot exercise the nft `queue` backend (CONFIG_NFT_QUEUE is off on this machine);
the guest kernel has it. The guest's 6.1 kernel is also the older-kernel check of the BPF offload
(the host runs 6.18): the package's offload.o must pass its verifier and carry data there. The
package is installed with the real opkg, the daemon runs under procd and is configured through
the real uci. Each test uses SPIs / tunnel ids of its own.
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
        assert m + " " in mods, "module %s not loaded (kmodloader, /etc/modules.d): %s" % (m, g.run("logread -e kmodloader").stdout)


def test_daemon_runs_under_init_script_with_nft_queue_backend(qlab):
    g = qlab.guest
    assert g.run("/etc/init.d/passthrough enabled").rc == 0, "init script not enabled (no /etc/rc.d link)"
    st = g.run("/etc/init.d/passthrough status")
    assert st.rc == 0 and "running" in st.stdout, st
    out = qlab.sh("passthrough status")
    assert "backend nft" in out, out
    ruleset = qlab.sh("nft list table ip passthrough")
    assert "queue flags bypass to 7100" in ruleset, ruleset
    assert "chain xt_queue" not in ruleset and "ip version @alive queue" in ruleset  # heartbeat-gated
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
    assert "BPF offload on: /usr/lib/passthrough/offload.o" in qlab.sh("logread -e passthrough")
    for dev in ("br-lan", "br-wan"):
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
    # the elements those flows needed went over netlink on this 6.1 kernel, not the fallback
    log = qlab.sh("logread -e passthrough")
    assert "over netlink" not in log, log


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


def test_procd_runs_the_service_and_logd_has_its_lines(qlab):
    """Real procd: `service passthrough status` and `ubus call service list` show the instance
    (command, respawn), its stderr goes to logd (`logread -e passthrough`)."""
    g = qlab.guest
    st = g.run("service passthrough status")
    assert st.rc == 0 and "running" in st.stdout, st
    inst = qlab.service()["passthrough"]
    assert inst["running"] and inst["command"][:2] == ["/usr/bin/passthrough", "run"], inst
    assert inst["respawn"] == {"threshold": 3600, "timeout": 5, "retry": 5}, inst
    assert g.run("/etc/init.d/passthrough enabled").rc == 0, "not enabled (no /etc/rc.d link)"
    log = qlab.sh("logread -e passthrough")
    assert "running: LAN br-lan, WAN br-wan" in log, log


def _live_l2tp(qlab, host, tid, seconds):
    """A scripted LAC on the host sending L2TP data for `seconds` (in the background)."""
    import subprocess

    argv = qlab.client_argv(host, "l2tp", "--server", SERVER, "--tid", tid, "--duration", seconds,
                            "--interval", 0.05, "--wait", 1.0, "--setup-timeout", 5)
    return subprocess.Popen(argv, cwd=qlab.repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _summary(proc, timeout=60):
    import json

    out, err = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("{") and '"summary"' in line:
            return json.loads(line)["summary"]
    raise AssertionError("client printed no summary: %s" % err[-2000:])


# Runs in the guest: commit, reload_config (its last step sends procd the config.change event),
# then poll the policy table; guest uptimes of the commit, the event and the change.
TRIGGER_SCRIPT = r"""
u() { cut -d' ' -f1 /proc/uptime; }
uci set passthrough.global.l2tp_passthrough=%(value)s && uci commit passthrough || exit 2
a=$(u); reload_config >/dev/null; b=$(u)
n=0
while %(negate)s nft list table inet passthrough_policy | grep -q 'l2tp_passthrough off'; do
    n=$((n + 1)); [ $n -gt 400 ] && exit 3
    sleep 0.05
done
echo "$a $b $(u)"
"""


def _commit_and_wait(qlab, value):
    """l2tp_passthrough=value, reload_config, until the daemon's policy table shows it: the guest's
    own seconds from the commit and from procd's event to the change (no agent round trips)."""
    out = qlab.sh(TRIGGER_SCRIPT % {"value": value, "negate": "!" if value == 0 else ""}, timeout=60)
    a, b, c = (float(x) for x in out.split())
    return {"commit_to_applied": round(c - a, 2), "event_to_applied": round(c - b, 2)}


def test_uci_commit_procd_trigger_reloads_and_cuts_a_live_l2tp_tunnel(qlab):
    """`uci set passthrough.global.l2tp_passthrough=0 && uci commit passthrough && reload_config`
    (the uci CLI itself tells nobody; reload_config, which LuCI's apply and rpcd's uci commit do
    too, sends procd the config.change event): procd's config trigger (PROCD_RELOAD_DELAY 250 ms)
    has procd send the daemon SIGHUP (`ubus call service signal`), the daemon applies it: the policy table
    drops L2TP, conntrack entries of L2TP are deleted, and a tunnel that was carrying data stops
    getting replies; raw ESP of the other host still flows. On again: new tunnels work. The delay
    is measured in the guest and reported (the time is a measurement, not a pass criterion:
    under TCG on a 2-core host it is 10-20x what the same code takes on a router)."""
    live = _live_l2tp(qlab, 0, 4311, seconds=25)
    try:
        qlab.wait_for(lambda: "4311" in qlab.sh("passthrough status"), 20, what="live tunnel tracked")
        time.sleep(1.0)  # let it carry data for a while
        off = _commit_and_wait(qlab, 0)
        t_applied = time.time()  # host clock, when the guest saw the change (+ one agent reply)
        summary = _summary(live)
        qlab.results["procd_trigger_reload_s"] = {"off": off}
        qlab.results["live_l2tp_cut"] = {"replies": summary["replies"], "sent": summary["sent"],
                                        "last_reply_before_applied_s": round(t_applied - summary["last_reply"], 2)}
        assert summary["replies"] > 10, summary  # it was live
        # and then cut: no reply later than a guest backlog after the switch (the TCG guest can lag
        # a second behind the host's clock), and the rest of the tunnel's packets got none
        assert summary["last_reply"] < t_applied + 2.0, (summary, t_applied)
        assert summary["sent"] - summary["replies"] >= 100, summary
        res = qlab.client(0, "l2tp", *l2tp(4312, count=5))
        assert res["replies"] == 0, res  # new tunnels blocked
        esp_res = qlab.client(1, "esp", *esp(0x21100, count=10))  # other families unaffected
        assert esp_res["replies"] == 10, esp_res
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
        on = _commit_and_wait(qlab, 1)
        qlab.results["procd_trigger_reload_s"] = dict(qlab.results.get("procd_trigger_reload_s", {}), on=on)
    res = qlab.client(0, "l2tp", *l2tp(4313))
    assert res.get("error") is None and res["replies"] == 10, res


def _pptp_back_on(qlab):
    """Switch PPTP on again and wait until the daemon applied it (no reload left in flight for
    the next test)."""
    qlab.uci_set(pptp_passthrough=1)
    qlab.sh("reload_config")
    qlab.wait_for(lambda: "pptp_passthrough off" not in qlab.sh("nft list table inet passthrough_policy"), 10,
                  interval=0.1, what="pptp on again")


def test_ubus_uci_commit_triggers_the_reload_without_reload_config(qlab):
    """rpcd's `uci` object (what LuCI calls) sends config.change itself on commit."""
    import json

    g = qlab.guest
    try:
        for val, want in (("0", True), ("1", False)):
            g.run("ubus call uci set '%s'" % json.dumps({"config": "passthrough", "section": "global",
                                                          "values": {"pptp_passthrough": val}}), timeout=30)
            assert g.run("ubus call uci commit '{\"config\": \"passthrough\"}'").rc == 0
            qlab.wait_for(lambda: ("pptp_passthrough off" in qlab.sh("nft list table inet passthrough_policy")) == want,
                          10, interval=0.1, what="pptp_passthrough=%s applied" % val)
    finally:
        _pptp_back_on(qlab)


def test_firewall_restart_recreates_the_policy_table_from_the_include(qlab):
    """Real fw4: `/etc/init.d/firewall restart` rebuilds table inet fw4 and runs the package's
    script include (/usr/share/passthrough/fw4.include), which installs the policy table from UCI:
    deleted by hand, it is back after the restart, with a switched-off family still dropped."""
    g = qlab.guest
    try:
        qlab.uci_set(pptp_passthrough=0)
        qlab.sh("reload_config")
        qlab.wait_for(lambda: "pptp_passthrough off" in qlab.sh("nft list table inet passthrough_policy"), 10,
                      interval=0.1, what="pptp off")
        qlab.sh("nft delete table inet passthrough_policy")
        r = g.run("/etc/init.d/firewall restart", timeout=60)
        assert r.rc == 0, r
        policy = qlab.sh("nft list table inet passthrough_policy")
        assert "pptp_passthrough off" in policy and "tcp dport 1723" in policy, policy
        assert "table inet fw4" in qlab.sh("nft list tables")
    finally:
        _pptp_back_on(qlab)


def test_fw4_software_flow_offloading_is_reported_as_bypassing_the_zones(qlab):
    """fw4's option flow_offloading makes a real nft flowtable (inet fw4 ft) whose entries carry no
    conntrack zone. Turned on with a firewall reload, the package's fw4 include logs a warning, and
    the daemon reports the flowtable in its status (and warns) at its next reload; turned off, the
    report is gone."""
    g = qlab.guest
    try:
        r = g.run("uci set firewall.@defaults[0].flow_offloading=1 && uci commit firewall && "
                  "/etc/init.d/firewall reload", timeout=90)
        assert r.rc == 0, r
        fts = qlab.sh("nft list flowtables")
        assert "flowtable ft" in fts, fts  # the guest kernel has nf_flow_table: the setting is real
        log = qlab.sh("logread -e passthrough")
        assert "fw4 include: an nft flowtable is present" in log, log
        assert qlab.sh("passthrough reload; echo rc=$?").strip().endswith("rc=0")
        st = qlab.stats()["flowtables"]
        assert [f[:3] for f in st] == [["inet", "fw4", "ft"]] and st[0][3], st
        assert "nft flowtable present: inet fw4 ft" in qlab.sh("logread -e passthrough"), qlab.log_tail()
        assert "warning: nft flowtable present" in qlab.sh("passthrough status")
        # The hazard the warning names, as it is: two hosts' L2TP to one server, both from 1701 (the
        # same reply tuple in two zones): with the flowtable one host loses its replies to the other
        # (measured 2 and 1 of 30 with the offload off / auto; 30 and 30 without the flowtable).
        res = qlab.clients("l2tp", [(0, l2tp(4311, count=30)), (1, l2tp(4312, count=30))])
        qlab.results["l2tp_two_hosts_with_fw4_flowtable"] = [r.get("replies") for r in res]
        assert min(r.get("replies") or 0 for r in res) < 30, res
    finally:
        g.run("uci set firewall.@defaults[0].flow_offloading=0 && uci commit firewall && "
              "/etc/init.d/firewall reload", timeout=90)
    assert "flowtable" not in qlab.sh("nft list flowtables")
    qlab.sh("passthrough reload")
    assert qlab.stats()["flowtables"] == []
    assert "nft flowtables gone" in qlab.sh("logread -e passthrough"), qlab.log_tail()


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
    assert still_dead, "procd respawned the daemon before the check (%.1f s): inconclusive" % dead_for
    # procd's respawn (after respawn_timeout, 5 s): the new daemon re-adopts the learned keys from the kernel maps.
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
        refusals = qlab.sh("logread -e passthrough").count("reload refused")
        r = g.run("/etc/init.d/passthrough reload")  # procd signals the daemon: the verdict goes to logd
        assert r.rc == 0, r
        line = qlab.wait_for(lambda: [l for l in qlab.sh("logread -e passthrough").splitlines()
                                      if "reload refused" in l][refusals:], 20, interval=0.2,
                             what="the daemon's refusal in logd")
        assert "udp_timeout" in line[0], line
        r = g.run("passthrough reload")  # the CLI asks the daemon itself and prints the verdict
        assert r.rc != 0 and "udp_timeout" in (r.stdout + r.stderr), r
        assert qlab.daemon_pid() == pid  # not restarted
        res = qlab.client(1, "l2tp", *l2tp(4321, count=5))
        assert res.get("error") is None and res["replies"] == 5, res
        assert "vpn-udp" in qlab.sh("nft list table ip passthrough") and "180" in qlab.sh(
            "nft list ct timeout ip passthrough vpn-udp")
    finally:
        qlab.uci_set(udp_timeout=180)
        assert g.run("passthrough reload").rc == 0


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
    # natt_ports auto (= distinct): one host keeps 4500, the other goes out from a port of the range
    ports = sorted(f["wan_port"] for f in natt_keys)
    assert len(ports) == 2 and ports[0] == 4500 and 14500 <= ports[1] <= 15523, natt_keys


def test_offload_off_detaches_the_program_and_data_stays_on_the_nft_path(qlab):
    """option offload 'off' + reload: the filters leave both ports (tc shows none), the summary
    says why, data still flows (nft path); back to 'auto': attached again and carrying."""
    g = qlab.guest
    try:
        qlab.uci_set(offload="off")
        qlab.sh("reload_config")
        qlab.wait_for(lambda: qlab.offload()["active"] is False, 10, interval=0.1, what="offload off applied")
        off = qlab.offload()
        assert off["active"] is False and "off" in off["note"], off
        for dev in ("br-lan", "br-wan"):
            tc = qlab.sh("tc filter show dev %s ingress" % dev)
            assert "0x7074" not in tc and "bpf" not in tc, (dev, tc)
        res = qlab.client(0, "esp", *esp(0x21630, count=20))
        assert res["replies"] == 20, res
    finally:
        qlab.uci_set(offload="auto")
        r = g.run("passthrough reload")  # synchronous: the offload is back when it returns
    assert r.rc == 0, r
    assert qlab.offload()["active"] is True, qlab.offload()
    for dev in ("br-lan", "br-wan"):
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
        # Alone at the server, the client keeps 4500 (natt_ports distinct gives later hosts
        # other ports): the connections of earlier modules' clients to the same server go.
        g.run("conntrack -F")
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
        t = time.time()
        qlab.wait_pings_carried(40, "the real client's pings carried by the BPF offload")
        qlab.results["l2tp_ipsec_real_client_offloaded_after_s"] = round(time.time() - t, 1)
    finally:
        g.run("pt-vpnlab down", timeout=60)


def test_bpf_offload_on_a_pppoe_wan_carries_a_real_l2tp_ipsec_client(qlab):
    """The most common home WAN: PPPoE. The router dials Debian's pppoe-server (rp-pppoe, in an
    ISP namespace) with pppd's kernel-mode pppoe.so, and wan_device is pppoe-wan (as
    uci-defaults sets it from a proto pppoe wan), in fw4's wan zone. The program sits on the ppp
    device's ingress as `offload_l3` (no MAC header there); the real L2TP/IPsec client behind
    the router gets through, and its pings over PPP go through the program both ways (inbound:
    from PPP to the Ethernet LAN; outbound: to PPP, the kernel dropping the Ethernet header).
    Then the session is dialled again (a PPPoE reconnect: a new pppoe-wan, a new ifindex): the
    program is on the new device and carries again."""
    g = qlab.guest

    def on_ppp():
        o = qlab.offload()
        return o.get("active") and "offload_l3" in qlab.sh("tc filter show dev pppoe-wan ingress") and o

    g.run("conntrack -F")
    undo = qlab.pppoe_wan_up()
    try:
        qlab.wait_for(on_ppp, 30, interval=0.3, what="the offload program on pppoe-wan")
        assert "a PPP port" in qlab.sh("logread -e passthrough | grep 'BPF offload on' | tail -n 1")
        r = g.run("VPNLAB_WAN=pppoe pt-vpnlab up", timeout=180)
        assert r.rc == 0, "%r\n%s" % (r, qlab.dump())
        natt = [f for f in qlab.status() if f["lan_ip"] == "192.168.1.20" and f["kind"] == "natt"]
        assert natt and natt[0]["state"] == "up" and natt[0]["remote_ip"] == "203.0.113.20", natt
        ct = qlab.sh("conntrack -L -p udp --dport 4500 -s 192.168.1.20 2>/dev/null")
        assert "dst=203.0.113.101" in ct, ct  # masqueraded to the PPPoE address
        t = time.time()
        qlab.wait_pings_carried(40, "the client's pings carried over PPPoE")
        qlab.results["pppoe_offloaded_after_s"] = round(time.time() - t, 1)
        # a reconnect: the same address again (the ISP's -R), a new device
        before = qlab.sh("cat /sys/class/net/pppoe-wan/ifindex").strip()
        g.run("kill $(cat /tmp/vpnlab/isp/router-pppd.pid)")
        qlab.wait_for(lambda: g.run("test -e /sys/class/net/pppoe-wan").rc != 0, 15, interval=0.2,
                      what="pppoe-wan gone")
        # The client keeps sending while the session is down; with PPPoE the only WAN there is
        # no route for it, so no conntrack entry is left to clash with the new session's.
        g.run("ip netns exec c1 ping -c 2 -i 0.2 -W 1 10.99.0.1")
        ct = qlab.sh("conntrack -L -p udp --dport 4500 -s 192.168.1.20 2>/dev/null")
        assert "dst=203.0.113.1 " not in ct, ct
        r = g.run("pt-vpnlab pppoe-redial", timeout=180)
        assert r.rc == 0, r
        assert qlab.sh("cat /sys/class/net/pppoe-wan/ifindex").strip() != before
        qlab.wait_for(on_ppp, 30, interval=0.3, what="the offload program on the new pppoe-wan")
        qlab.wait_pings_carried(40, "the client's pings carried after the reconnect")
    finally:
        g.run("pt-vpnlab down", timeout=90)
        qlab.pppoe_wan_down(undo)
    assert qlab.offload().get("active"), qlab.offload()
    assert "offload" in qlab.sh("tc filter show dev br-wan ingress")


def assert_nothing_left(lab):
    """After the packages are removed: no passthrough table, rule, tc filter, process, procd
    service or file is left (fw4's own table stays)."""
    g = lab.guest
    tables = lab.sh("nft list tables")
    assert "passthrough" not in tables, tables
    assert "passthrough" not in lab.sh("nft list ruleset"), lab.sh("nft list ruleset")
    for dev in ("br-lan", "br-wan"):
        tc = lab.sh("tc filter show dev %s ingress" % dev)
        assert "offload" not in tc and "bpf" not in tc, (dev, tc)
    assert lab.service() == {}, lab.service()
    assert g.run("pgrep -f 'passthrough run'").rc != 0, g.run("ps w").stdout
    for path in ("/usr/bin/passthrough", "/usr/lib/passthrough", "/etc/init.d/passthrough",
                 "/usr/share/rpcd/acl.d/luci-app-passthrough.json", "/var/run/passthrough.sock"):
        assert g.run("test -e %s" % path).rc != 0, path
    assert not [n for n in lab.sh("ls /etc/rc.d").split() if "passthrough" in n]
    assert "passthrough" not in lab.sh("uci -q show firewall || true")  # the fw4 include is unregistered
    assert "table inet fw4" in tables


def test_opkg_remove_leaves_nothing_behind(qlab):
    """Last test of this boot: `opkg remove` of all three packages."""
    qlab.spent = True
    r = qlab.guest.run("opkg remove luci-app-passthrough passthrough python3-netfilterqueue", timeout=180)
    assert r.rc == 0, r
    assert_nothing_left(qlab)
