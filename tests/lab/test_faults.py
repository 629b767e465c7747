"""Faults (marker lab): the daemon killed and restarted under traffic, a stalled consumer with a
full queue, bad configuration at start-up, missing kernel features and devices, a WAN device
re-created with a new ifindex (PPPoE reconnect)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from passthrough.cli import ask
from passthrough.lab.harness import wait_for
from passthrough.lab.topology import nsexec

from labutil import queue_counters, recreate_wan, run_daemon_once, running_lab, with_options  # noqa: E402

pytestmark = pytest.mark.lab
DEFAULTS = dict(enabled="1", l2tp_passthrough="1", ipsec_passthrough="1", pptp_passthrough="1",
                lan_device="br-lan", wan_device="wan", queue_backend="auto")


@pytest.fixture(scope="module")
def lab():
    with running_lab("x") as run:
        yield run


@pytest.fixture
def fresh(lab):
    return with_options(lab, DEFAULTS)


def read_stream(proc):
    events = [json.loads(line) for line in proc.stdout]
    proc.wait(30)
    return events


def summary(events):
    return [e["summary"] for e in events if "summary" in e][-1]


def uci(lab, **opts):
    o = dict(DEFAULTS, control_socket=os.path.join(lab.workdir, "faults.sock"), log_level="info")
    o.update(opts)
    return "config passthrough 'global'\n" + "".join("\toption %s '%s'\n" % (k, v) for k, v in sorted(o.items()))


def test_kill9_and_restart_under_traffic(fresh):
    """Established ESP keeps flowing through kill -9 and restart; the restarted daemon adopts
    the flows the kernel kept."""
    srv = fresh.lab.server_ip(0)
    streams = [fresh.client_stream(h, "esp", "--server", srv, "--spi", hex(0x31000 + h), "--duration", 5,
                                   "--interval", 0.02, "--wait", 0.5) for h in range(2)]
    time.sleep(1.5)
    fresh.kill_daemon()
    t_kill = time.time()
    time.sleep(1.0)
    fresh.start_daemon()
    t_up = time.time()
    flows = {(f["kind"], f["key_out"]): f for f in fresh.status()["flows"]}
    results = [read_stream(p) for p in streams]
    for h, ev in enumerate(results):
        s = summary(ev)
        assert s["sent"] > 150 and s["replies"] >= 0.97 * s["sent"], (h, s)
        gap = [e for e in ev if e.get("event") == "reply" and t_kill <= e["t"] <= t_up]
        assert len(gap) >= 0.8 * (t_up - t_kill) * 50, "ESP of host %d stalled without the daemon" % h
    for h in range(2):
        f = flows.get(("esp", "%08x" % (0x31000 + h)))
        assert f is not None and f["lan_ip"] == fresh.lab.lan_ip(h) and f["state"] == "up", flows


def test_stalled_consumer_full_queue_fails_open(fresh):
    """SIGSTOP the daemon (alive, queue bound, nobody reading) and fill its queue. Established
    flows are not queued and carry on. Packets that find the queue full are accepted, not dropped
    (the daemon sets NFQA_CFG_F_FAIL_OPEN on its queue), so even a new IKE SA gets answers
    (unlearned, plain NAT) while the consumer is stuck. SIGCONT: the backlog is worked off."""
    srv = fresh.lab.server_ip(0)
    assert fresh.client(0, "esp", "--server", srv, "--spi", "0x32000", "--count", 5, "--wait", 0.3)["replies"] == 5
    assert ask(fresh.control, "stats")["summary"].get("queue_fail_open") is True
    q0 = queue_counters(fresh)
    pid = fresh.daemon.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # 5000 IKE messages with fresh SPIs from host 1: each is queued (outbound IKE always is).
        fill = ("import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',40500))\n"
                "for i in range(5000):\n s.sendto(struct.pack('!QQBBBBII',0x3300000000+i,0,0,0x20,34,8,0,28),('%s',500))\n"
                % srv)
        nsexec(fresh.lab.lan_hosts[0], sys.executable, "-c", fill)
        time.sleep(0.3)
        q1 = queue_counters(fresh)
        held = q1["waiting"]
        esp = fresh.client(0, "esp", "--server", srv, "--spi", "0x32000", "--count", 10, "--interval", 0.01, "--wait", 0.3)
        ike = fresh.client(1, "ike", "--server", srv, "--sport", 40501, "--spi", "0x3400", "--count", 5, "--wait", 0.5)
        q2 = queue_counters(fresh)
    finally:
        os.kill(pid, signal.SIGCONT)
    t = time.time()
    wait_for(lambda: queue_counters(fresh)["waiting"] == 0, 20, what="backlog worked off")
    drain_s = time.time() - t
    print("stalled consumer:", json.dumps({"held_in_queue": held,
                                           "overflow_dropped": q2["overflow_dropped"] - q0["overflow_dropped"],
                                           "esp_replies": esp["replies"], "ike_replies": ike["replies"],
                                           "drain_s": round(drain_s, 2)}))
    assert held >= 4000, q1  # the queue holds what came before it was full...
    assert q2["overflow_dropped"] == q0["overflow_dropped"], (q0, q2)  # ...and the rest passed (fail-open), none dropped
    assert esp["replies"] == 10, esp
    assert ike["replies"] == 5, ike
    assert ask(fresh.control, "stats", timeout=5)["ok"]


def test_bad_config_at_startup_exit_2(lab):
    rc, err = run_daemon_once(lab, uci(lab, ipsec_passthrough="perhaps"))
    assert rc == 2, (rc, err)
    assert "bad configuration" in err and "ipsec_passthrough" in err and "perhaps" in err, err
    rc, err = run_daemon_once(lab, uci(lab, queue_num="70000"))
    assert rc == 2 and "queue_num" in err and "out of range" in err, (rc, err)
    rc, err = run_daemon_once(lab, "config passthrough 'global'\n\toption enabled '1\n")
    assert rc == 2 and "unterminated quote" in err, (rc, err)


def nft_queue_supported(lab):
    probe = "table ip pt_qprobe { chain c { type filter hook prerouting priority 0; meta l4proto 253 queue flags bypass to 7999; } }\n"
    p = subprocess.run(["ip", "netns", "exec", lab.lab.router, "nft", "-f", "-"], input=probe, capture_output=True, text=True)
    subprocess.run(["ip", "netns", "exec", lab.lab.router, "nft", "delete", "table", "ip", "pt_qprobe"], capture_output=True)
    return p.returncode == 0


def test_missing_kernel_feature_clear_error(lab):
    """queue_backend 'nft' on a kernel without nft_queue: a clear message and exit 3, and the
    failed start leaves the tables a previous run kept (established flows) alone."""
    lab.stop_daemon()
    try:
        if nft_queue_supported(lab):
            pytest.xfail("this kernel has nft queue; the error path cannot be shown here")
        lab.write_config(**DEFAULTS)
        lab.start_daemon()
        lab.kill_daemon()  # as after a crash: the fast-path table stays
        rc, err = run_daemon_once(lab, uci(lab, queue_backend="nft"))
        assert rc == 3, (rc, err)
        assert "nft queue statement unsupported" in err and "kmod-nft-queue" in err, err
        assert "table ip passthrough" in lab.nft("list", "tables"), "failed start removed the kept table"
    finally:
        lab.write_config(**DEFAULTS)
        lab.start_daemon()


def test_missing_device_is_a_warning(fresh):
    reply = fresh.set_options(lan_device="nosuchlan0")
    assert reply["ok"], reply
    assert ask(fresh.control, "stats")["ok"]
    assert "device nosuchlan0 does not exist" in fresh.log_tail(40)
    fresh.stop_daemon()
    fresh.start_daemon()  # and at start-up: a warning, not a crash
    assert ask(fresh.control, "stats")["ok"]
    assert fresh.set_options(**DEFAULTS)["ok"]


def test_wan_device_recreated_new_ifindex(fresh):
    srv = fresh.lab.server_ip(0)
    before = int(nsexec(fresh.lab.router, "cat", "/sys/class/net/wan/ifindex").stdout)
    recreate_wan(fresh)
    after = int(nsexec(fresh.lab.router, "cat", "/sys/class/net/wan/ifindex").stdout)
    assert after != before
    time.sleep(1.1)
    # A new ESP SA: its first inbound packet (unknown SPI) is queued from the new WAN ifindex and
    # must be taken as inbound (paired with host 2's outbound SA), not as outbound traffic.
    res = fresh.client(1, "esp", "--server", srv, "--spi", "0x35000", "--count", 10, "--wait", 0.5)
    assert res["replies"] == 10, res
    st = fresh.status()
    assert srv not in st["summary"]["hosts"], st["summary"]["hosts"]
    f = [x for x in st["flows"] if x["kind"] == "esp" and x["key_out"] == "00035000"]
    assert f and f[0]["state"] == "up" and f[0]["key"] == "00036000" and f[0]["lan_ip"] == fresh.lab.lan_ip(1), f
    assert "device wan is now ifindex %d" % after in fresh.log_tail(60)


def test_table_of_an_older_layout_is_reinstalled(fresh):
    """A daemon upgraded under a kept table whose maps changed type (esp_out was a set before
    the one-lookup fast path) must not fail to start: it reinstalls the table, with a warning."""
    fresh.kill_daemon()
    old = ("table ip passthrough {}\ndelete table ip passthrough\ntable ip passthrough {\n"
           "\tset esp_out { typeof ip saddr . @th,0,32; }\n"
           "\tchain classify { type filter hook prerouting priority -310; policy accept; }\n}\n")
    nsexec(fresh.lab.router, "nft", "-f", "-", input=old)
    fresh.start_daemon()
    assert ask(fresh.control, "stats")["ok"]
    assert "does not fit this version" in fresh.log_tail(60)
    assert "map esp_out" in fresh.nft("list", "table", "ip", "passthrough")
    s = fresh.client(0, "esp", "--server", fresh.lab.server_ip(0), "--spi", "0x47000", "--count", 5, "--wait", 0.5)
    assert s["replies"] == 5, s
