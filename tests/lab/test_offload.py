"""The BPF offload (nat/bpf/offload.c, nat/bpf.py) in the namespace lab: learned data flows of
two LAN hosts sharing one server are carried by the tc program (the router's forward hook sees
none of them) and still answered; conntrack entries of carried flows are kept alive; a flushed
entry sends its flows back to the stack and they come back; a family switched off stops being
carried at once; a missing neighbour, a daemon killed and restarted, offload 'off' and a
missing object all behave."""
import json
import os
import subprocess
import sys
import time

import pytest

from passthrough.lab.harness import wait_for
from passthrough.lab.topology import nsexec

from labutil import recreate_wan, run_daemon_once, running_lab, with_options  # noqa: E402

pytestmark = pytest.mark.lab
DEFAULTS = dict(enabled="1", l2tp_passthrough="1", ipsec_passthrough="1", pptp_passthrough="1", offload="auto")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Data packets of the three kinds as the router's forward hook sees them (control excluded:
# IKE on 4500 has a zero marker, L2TP control the T bit).
FORWARD_COUNT = """table ip pt_offload_test {
	chain seen {
		type filter hook forward priority 10; policy accept;
		meta l4proto esp counter
		udp dport 4500 @th,64,32 != 0 counter
		udp sport 4500 @th,64,32 != 0 counter
		udp dport 1701 @th,64,8 & 0x80 == 0 counter
		udp sport 1701 @th,64,8 & 0x80 == 0 counter
	}
}
"""


@pytest.fixture(scope="module")
def lab():
    with running_lab("o") as run:
        nsexec(run.lab.router, "nft", "-f", "-", input=FORWARD_COUNT)
        yield run


@pytest.fixture
def fresh(lab):
    return with_options(lab, DEFAULTS)


def offload(lab):
    return lab.status()["summary"]["offload"]


def forwarded(lab):
    out = nsexec(lab.lab.router, "nft", "list", "chain", "ip", "pt_offload_test", "seen").stdout
    return sum(int(part.split()[0]) for part in out.split("counter packets ")[1:])


def args(lab, kind, ident, count=None, duration=None, server=0):
    a = ["--server", lab.lab.server_ip(server), "--interval", 0.01, "--wait", 0.5]
    a += ["--tid", ident] if kind == "l2tp" else ["--spi", hex(ident)]
    a += ["--duration", duration] if duration else ["--count", count]
    return a


def learn(lab, kind, base):
    """Both hosts start a flow to the same server; wait until the program carries both."""
    before = offload(lab)["entries"]
    res = lab.clients(kind, [args(lab, kind, base + h, count=5) for h in range(2)])
    assert [r["replies"] for r in res] == [5, 5], res
    # two flows, each an entry per direction
    wait_for(lambda: offload(lab)["entries"] >= before + 4, 10, what="both %s flows offloaded" % kind)


@pytest.mark.parametrize("kind,base", [("natt-esp", 0x61000), ("esp", 0x62000), ("l2tp", 610)])
def test_two_hosts_sharing_a_server_are_carried_by_the_program(fresh, kind, base):
    learn(fresh, kind, base)
    carried0, fwd0 = offload(fresh)["program"]["carried"], forwarded(fresh)
    res = fresh.clients(kind, [args(fresh, kind, base + h, count=100) for h in range(2)])
    assert [r["replies"] for r in res] == [100, 100], res
    carried = offload(fresh)["program"]["carried"] - carried0
    fwd = forwarded(fresh) - fwd0
    # 2 hosts x 100 packets x 2 directions; the L2TP client's SCCRQ/ZLB are control packets.
    assert carried >= 400, (fwd, offload(fresh)["program"])
    assert fwd == 0, "%d data packets went through the IP stack" % fwd


def test_lns_answering_from_another_port_is_carried(fresh):
    """RFC 2661 8.1: the LNS at the second server address answers from port 1702. Conntrack's
    entry for the data then is the one the WAN side opened (DNATed into the host's zone); the
    offload copies its translation and carries both ways."""
    before = offload(fresh)["entries"]
    res = fresh.clients("l2tp", [args(fresh, "l2tp", 660 + h, count=5, server=1) for h in range(2)])
    assert [r["replies"] for r in res] == [5, 5] and all(r["peer_port"] == 1702 for r in res), res
    wait_for(lambda: offload(fresh)["entries"] >= before + 4, 10, what="both tunnels offloaded")
    carried0, fwd0 = offload(fresh)["program"]["carried"], forwarded(fresh)
    res = fresh.clients("l2tp", [args(fresh, "l2tp", 660 + h, count=100, server=1) for h in range(2)])
    assert [r["replies"] for r in res] == [100, 100], res
    assert offload(fresh)["program"]["carried"] - carried0 >= 400, offload(fresh)["program"]
    assert forwarded(fresh) - fwd0 == 0


def test_rekeyed_sa_of_a_carried_pair_is_learned_and_carried(fresh):
    """A new SA (new SPIs, same hosts, ports and server) must reach the daemon: the program
    keys outbound packets by SPI too, else it would carry the new SA's packets out and the
    daemon could never pair the SA answering them."""
    learn(fresh, "natt-esp", 0x6A000)
    learn(fresh, "natt-esp", 0x6A100)  # the rekey: both hosts, same ports and server
    keys = set(f["key_out"] for f in fresh.status()["flows"] if f["kind"] == "natt")
    assert {"0006a100", "0006a101"} <= keys, keys
    carried0 = offload(fresh)["program"]["carried"]
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x6A100 + h, count=50) for h in range(2)])
    assert [r["replies"] for r in res] == [50, 50], res
    assert offload(fresh)["program"]["carried"] - carried0 >= 200


def set_ct_timeout(lab, proto, orig, zone, seconds):
    code = ("import sys; sys.path.insert(0, %r); from nat.ctnetlink import Conntrack; "
            "print(Conntrack().set_timeout(%d, %r, %d, %d))" % (ROOT, proto, orig, zone, seconds))
    return nsexec(lab.lab.router, sys.executable, "-c", code).stdout.strip() == "True"


def ct_line(lab, needle):
    lines = [line for line in lab.conntrack().splitlines() if needle in line]
    return lines[0] if lines else None


def test_conntrack_entry_of_a_carried_flow_is_kept_alive(fresh):
    learn(fresh, "esp", 0x63000)
    host, server = fresh.lab.lan_ip(0), fresh.lab.server_ip(0)
    zone = [f["zone"] for f in fresh.status()["flows"] if f["lan_ip"] == host][0]
    needle = "src=%s dst=%s src=%s" % (host, server, server)
    assert ct_line(fresh, needle), fresh.conntrack()
    # Conntrack sees none of the carried packets: without the daemon's refresh the entry would
    # die in 8 s, during the traffic below.
    assert set_ct_timeout(fresh, 50, (host, server, 0, 0), zone, 8)
    res = fresh.client(0, "esp", *args(fresh, "esp", 0x63000, duration=14))
    assert res["replies"] == res["sent"], res
    line = ct_line(fresh, needle)
    assert line, "the carried flow's conntrack entry expired:\n" + fresh.conntrack()
    assert int(line.split()[2]) > 60, line
    assert offload(fresh)["conntrack_refreshed"] > 0


def test_flushed_conntrack_sends_flows_back_to_the_stack_and_they_return(fresh):
    learn(fresh, "natt-esp", 0x64000)
    proc = fresh.client_stream(0, "natt-esp", *args(fresh, "natt-esp", 0x64000, duration=16))
    time.sleep(2)
    subprocess.run(["ip", "netns", "exec", fresh.lab.router, "conntrack", "-F"], capture_output=True)
    out, _ = proc.communicate(timeout=60)
    summary = [line for line in out.splitlines() if '"summary"' in line][-1]
    sent, replies = (int(summary.split('"%s": ' % k)[1].split(",")[0].split("}")[0]) for k in ("sent", "replies"))
    assert replies >= sent - 2, summary
    log = fresh.log_tail(200)
    assert "is gone or made again: back to the stack" in log, log
    # Offloaded again from the entry the stack made.
    wait_for(lambda: offload(fresh)["pairs"] >= 1, 5, what="re-offload")
    assert log.rindex("offloading udp %s:4500" % fresh.lab.lan_ip(0)) > log.index("is gone or made again: back to the stack")


def test_idle_pair_whose_entry_expired_goes_back_to_the_stack_before_it_resumes(fresh):
    """An idle flow's conntrack entry times out as usual (only carried pairs are refreshed).
    The daemon notices at its next refresh (every 10 s) without waiting for traffic: the pair
    leaves the program, so when the flow resumes its packets make a new entry through the
    stack and are offloaded from it, not carried on a translation nobody holds (the bench's
    second frame size met exactly this: minutes idle, then re-learned)."""
    learn(fresh, "natt-esp", 0x64800)
    pairs0 = offload(fresh)["pairs"]
    assert pairs0 >= 1
    subprocess.run(["ip", "netns", "exec", fresh.lab.router, "conntrack", "-F"], capture_output=True)
    wait_for(lambda: offload(fresh)["pairs"] < pairs0, 15, what="the idle pair back on the stack")
    assert "is gone or made again: back to the stack" in fresh.log_tail(100)
    learn(fresh, "natt-esp", 0x64800)  # resumes: through the stack, a new entry, offloaded again
    wait_for(lambda: offload(fresh)["pairs"] >= pairs0, 10, what="re-offload after the flow resumed")


def test_family_switched_off_is_not_carried(fresh):
    learn(fresh, "l2tp", 650)
    learn(fresh, "natt-esp", 0x65000)
    reply = fresh.set_options(**dict(DEFAULTS, l2tp_passthrough="0"))
    assert reply["ok"], reply
    try:
        res = fresh.clients("l2tp", [args(fresh, "l2tp", 650 + h, count=20) for h in range(2)])
        assert [r["replies"] for r in res] == [0, 0], res
        res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x65000 + h, count=20) for h in range(2)])
        assert [r["replies"] for r in res] == [20, 20], res
        st = offload(fresh)
        assert st["active"] and st["entries"] >= 3, st
        kinds = set(f["kind"] for f in fresh.status()["flows"])
        assert "l2tp" not in kinds, kinds
    finally:
        fresh.set_options(**DEFAULTS)


def test_missing_neighbour_goes_through_the_stack(fresh):
    learn(fresh, "natt-esp", 0x66000)
    fib0 = offload(fresh)["program"]["fib"]
    nsexec(fresh.lab.router, "ip", "neigh", "flush", "dev", "br-lan")
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x66000 + h, count=50) for h in range(2)])
    assert [r["replies"] for r in res] == [50, 50], res
    assert offload(fresh)["program"]["fib"] > fib0  # no neighbour: the stack resolved it


def our_filters(lab, dev):
    """Our programs on the port, tcx and clsact: [{"hook", "id"}] (nat.bpf.attached)."""
    code = ("import json, socket, sys; sys.path.insert(0, %r); from nat import bpf; "
            "print(json.dumps(bpf.attached(socket.if_nametoindex(%r))))" % (ROOT, dev))
    return json.loads(nsexec(lab.lab.router, sys.executable, "-c", code).stdout)


def test_program_runs_on_tcx_and_an_older_clsact_filter_goes(fresh):
    """Kernel 6.6+: the program is on the ports' tcx ingress (the clsact hook costs every
    forwarded packet 4-5 %, tcx 1-2 %). An older version's clsact filter (handle 0x7074) is
    removed when the daemon attaches, so no packet meets the program twice."""
    assert [f["hook"] for f in our_filters(fresh, "wan")] == ["tcx"], our_filters(fresh, "wan")
    assert set(offload(fresh)["hooks"].values()) == {"tcx"}, offload(fresh)
    fresh.stop_daemon()
    try:
        code = ("import socket, sys; sys.path.insert(0, %r); from nat import bpf; p = bpf.OffloadProgram(); "
                "p.lib.has_tcx = False; print(p.attach(socket.if_nametoindex('wan'), 'offload'))" % ROOT)
        assert nsexec(fresh.lab.router, sys.executable, "-c", code).stdout.strip() == "tc"
        assert [f["hook"] for f in our_filters(fresh, "wan")] == ["tc"]
        assert "handle 0x7074" in nsexec(fresh.lab.router, "tc", "filter", "show", "dev", "wan", "ingress").stdout
    finally:
        fresh.start_daemon()
    assert [f["hook"] for f in our_filters(fresh, "wan")] == ["tcx"], our_filters(fresh, "wan")
    assert "0x7074" not in nsexec(fresh.lab.router, "tc", "filter", "show", "dev", "wan", "ingress").stdout


def test_daemon_killed_and_restarted_keeps_carrying(fresh):
    learn(fresh, "natt-esp", 0x67000)
    old = our_filters(fresh, "wan")
    assert len(old) == 1, old
    fresh.kill_daemon()
    try:
        # The program outlives the daemon (fail-open forwarding): flows keep being answered.
        res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x67000 + h, count=30) for h in range(2)])
        assert [r["replies"] for r in res] == [30, 30], res
    finally:
        fresh.start_daemon()
    new = our_filters(fresh, "wan")
    assert len(new) == 1 and new != old, (old, new)  # replaced, not stacked
    learn(fresh, "natt-esp", 0x67000)
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x67000 + h, count=30) for h in range(2)])
    assert [r["replies"] for r in res] == [30, 30], res


def test_offload_off_detaches_and_stop_removes_the_program(fresh):
    assert our_filters(fresh, "wan") and our_filters(fresh, "br-lan")
    reply = fresh.set_options(**dict(DEFAULTS, offload="off"))
    assert reply["ok"], reply
    st = offload(fresh)
    assert not st["active"] and "off" in st["note"], st
    assert our_filters(fresh, "wan") == [] and our_filters(fresh, "br-lan") == []
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x68000 + h, count=20) for h in range(2)])
    assert [r["replies"] for r in res] == [20, 20], res  # the nft path carries them
    fresh.set_options(**DEFAULTS)
    assert our_filters(fresh, "wan")
    fresh.stop_daemon()
    try:
        assert our_filters(fresh, "wan") == [] and our_filters(fresh, "br-lan") == []
    finally:
        fresh.start_daemon()


def test_recreated_wan_port_gets_the_program_again(fresh):
    """A PPPoE-style reconnect: the WAN port vanishes with the program on it and comes back with
    a new ifindex. Until the daemon notices (within a second) classify must not trust marks from
    it; then the program is attached again and carries again."""
    learn(fresh, "natt-esp", 0x6B000)
    recreate_wan(fresh)
    wait_for(lambda: len(our_filters(fresh, "wan")) == 1, 5, what="the program back on the new WAN port")
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x6B000 + h, count=20) for h in range(2)])
    assert [r["replies"] for r in res] == [20, 20], res
    learn(fresh, "natt-esp", 0x6B000)  # entries were keyed by the old ifindex: offloaded anew
    c0 = offload(fresh)["program"]["carried"]
    res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x6B000 + h, count=50) for h in range(2)])
    assert [r["replies"] for r in res] == [50, 50], res
    assert offload(fresh)["program"]["carried"] - c0 >= 200


def test_offload_bpf_survives_a_wan_port_gone_for_a_while(fresh):
    """offload 'bpf' refuses to start without the program, but a WAN port that vanishes for a
    few seconds later (PPPoE reconnect) is logged, not fatal, and the program comes back."""
    assert fresh.set_options(**dict(DEFAULTS, offload="bpf"))["ok"]
    try:
        recreate_wan(fresh, gap=2.5)
        assert fresh.daemon.poll() is None, fresh.log_tail(30)
        assert "BPF offload unavailable, data stays on the nft path" in fresh.log_tail(60)
        wait_for(lambda: len(our_filters(fresh, "wan")) == 1, 5, what="the program back on the new WAN port")
        assert offload(fresh)["active"]
        res = fresh.clients("natt-esp", [args(fresh, "natt-esp", 0x6C000 + h, count=20) for h in range(2)])
        assert [r["replies"] for r in res] == [20, 20], res
    finally:
        fresh.set_options(**DEFAULTS)


def config_text(lab, **opts):
    o = dict(DEFAULTS, lan_device="br-lan", wan_device="wan", control_socket=os.path.join(lab.workdir, "o.sock"))
    o.update(opts)
    return "config passthrough 'global'\n" + "".join("\toption %s '%s'\n" % kv for kv in sorted(o.items()))


def test_offload_bpf_without_the_object_refuses_to_start(lab):
    lab.stop_daemon()
    try:
        rc, err = run_daemon_once(lab, config_text(lab, offload="bpf"),
                                  env=dict(os.environ, PASSTHROUGH_BPF_OBJECT="/nonexistent/offload.o"))
        assert rc == 3, err
        assert "offload 'bpf'" in err and "/nonexistent/offload.o" in err, err
        assert our_filters(lab, "wan") == []
    finally:
        lab.start_daemon()


def test_offload_auto_without_the_object_says_why_and_runs(lab):
    lab.stop_daemon()
    env = dict(os.environ, PASSTHROUGH_BPF_OBJECT="/nonexistent/offload.o")
    saved = os.environ.copy()
    os.environ.update(env)
    try:
        lab.start_daemon()
        st = offload(lab)
        assert not st["active"] and "BPF object not found" in st["note"], st
        assert "BPF offload unavailable, data stays on the nft path" in lab.log_tail(20)
        res = lab.clients("natt-esp", [args(lab, "natt-esp", 0x69000 + h, count=20) for h in range(2)])
        assert [r["replies"] for r in res] == [20, 20], res
    finally:
        os.environ.clear()
        os.environ.update(saved)
        lab.stop_daemon()
        lab.start_daemon()
