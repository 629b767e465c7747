"""Control path: packets/s through the NFQUEUE, bare accept loop vs the daemon.

trafgen floods the router from a LAN host with packets the classify chain always queues (the
offered rate is far above what a Python consumer takes, so the queue stays full and the
consumer's own speed is measured). Both consumers are measured the same way, from the kernel's
side: /proc/net/netfilter/nfnetlink_queue of the router namespace, processed =
delta(id_sequence) - delta(dropped) - delta(user_dropped) - delta(queue_total), over a fixed window.

Scenarios:
  ike_known  IKE messages of one established SA (INFORMATIONAL, fixed SPI_i): decode + engine
             lookup, no kernel op (the steady control traffic of live tunnels)
  ike_new    IKE_SA_INIT with a random SPI_i per packet: a new flow and one nft element op per
             packet until the host's flow quota (flows_per_host) is full, then refused flows
  l2tp_ctl   L2TP HELLO on a live tunnel (T bit: always queued)

element_ops: the cost of one element op (Kernel.apply of one add, then one delete, esp_zone
with its comment) in a namespace of its own with the daemon's table: over netlink (the
daemon's way) and as libnftables text (its fallback). A flow's set-up and teardown pay it.
"""
import json
import os
import subprocess
import sys
import time

from bench import lablib as B
from passthrough.cli import ask

IKE_SPI = 0x6A6B6C6D6E6F7071
L2TP_TID = 4811
HERE = os.path.dirname(os.path.abspath(__file__))


def queue_counters(run, queue_num):
    out = B.nsexec(run.lab.router, "cat", "/proc/net/netfilter/nfnetlink_queue", check=False).stdout
    for line in out.splitlines():
        f = line.split()
        if f and int(f[0]) == queue_num:
            return {"total": int(f[2]), "dropped": int(f[5]), "user_dropped": int(f[6]), "seq": int(f[7])}
    return None


def processed(c0, c1):
    """id_sequence counts packets that got into the queue (overflow drops do not)."""
    return (c1["seq"] - c0["seq"]) - (c1["user_dropped"] - c0["user_dropped"]) - (c1["total"] - c0["total"])


def learn(run):
    srv = run.lab.server_ip(0)
    ike = run.client(0, "ike", "--server", srv, "--spi", hex(IKE_SPI), "--count", 2, "--wait", 0.3)
    l2tp = run.client(0, "l2tp", "--server", srv, "--tid", L2TP_TID, "--count", 2, "--wait", 0.3)
    if not ike.get("replies") or not l2tp.get("replies"):
        raise RuntimeError("learning control flows failed: %s %s" % (ike, l2tp))
    return {"l2tp_peer_tid": l2tp["peer_tid"]}


def flood_conf(run, learned, scenario, path):
    """trafgen config; UDP checksum 0 (none), so random bytes need no checksum fix-up."""
    L = run.lab
    lan, srv = L.lan_ip(0), L.server_ip(0)
    hmac, rlan = B.mac_of(L.lan_hosts[0], "eth0"), B.mac_of(L.router, "br-lan")

    def frame_bytes(sport, dport, payload):
        udp = B.struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        return B.ether(rlan, hmac, B.ipv4(lan, srv, 17, udp))

    if scenario == "ike_known":
        fr = frame_bytes(500, 500, B.ike_header(IKE_SPI, msgid=7, exch=37, spi_r=0x1122334455667788))
        text = B.trafgen_conf([fr])
    elif scenario == "l2tp_ctl":
        fr = frame_bytes(1701, 1701, B.l2tp_control_hello(learned["l2tp_peer_tid"], ns=3, nr=2))
        text = B.trafgen_conf([fr])
    elif scenario == "ike_new":
        fr = frame_bytes(500, 500, B.ike_header(0x0101010101010101, msgid=0, exch=34))
        # SPI_i is bytes 42..49 of the frame (14 eth + 20 ip + 8 udp): random per packet.
        cells = ["0x%02x" % b for b in fr]
        cells[42:50] = ["drnd(8)"]
        text = "{ " + ", ".join(cells) + " }\n"
    else:
        raise ValueError(scenario)
    with open(path, "w") as f:
        f.write(text)


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (the consumer's own CPU, whatever its share)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])
    except (OSError, IndexError, ValueError):
        return None


def window(run, queue_num, gen_conf, seconds, pid, warmup=0.5, probe_control=False):
    """Flood for warmup+seconds; count what the consumer processed in the window and the CPU
    time it used (pkt per CPU-second does not depend on how much CPU other load leaves it)."""
    L = run.lab
    B.sink_install(L.server, "ip saddr %s" % B.wan_ip())
    gen = B.Trafgen(L.lan_hosts[0], "eth0", gen_conf, cpus=1, count=3000000).start()
    lat = []
    try:
        time.sleep(warmup)
        c0 = queue_counters(run, queue_num)
        k0 = cpu_ticks(pid)
        t0 = time.monotonic()
        if probe_control:
            end = t0 + seconds
            while time.monotonic() < end:
                s = time.monotonic()
                try:
                    ask(run.control, "stats", timeout=5.0)
                    lat.append((time.monotonic() - s) * 1000)
                except (OSError, ValueError):
                    lat.append(None)
                time.sleep(0.25)
            time.sleep(max(0.0, end - time.monotonic()))
        else:
            time.sleep(seconds)
        c1 = queue_counters(run, queue_num)
        k1 = cpu_ticks(pid)
        t1 = time.monotonic()
    finally:
        gen.stop()
        time.sleep(0.3)
        B.sink_remove(L.server)
    dt = t1 - t0
    n = processed(c0, c1)
    cpu = (k1 - k0) / float(os.sysconf("SC_CLK_TCK")) if k0 is not None and k1 is not None else None
    res = {"pps": round(n / dt), "cpu_share": round(cpu / dt, 2) if cpu else None,
           "pps_per_cpu": round(n / cpu) if cpu else None, "offered_pps": round((c1["seq"] - c0["seq"] + c1["dropped"] - c0["dropped"]) / dt),
           "dropped_pps": round((c1["dropped"] - c0["dropped"]) / dt)}
    if probe_control:
        ok = [x for x in lat if x is not None]
        res["control_ms_max"] = round(max(ok), 1) if ok else None
        res["control_failures"] = len(lat) - len(ok)
    return res


def bare(run, queue_num, conf, seconds, workdir):
    """Kill -9 the daemon (rules stay), bind the bare loop, flood, restart the daemon."""
    run.kill_daemon()
    ready = os.path.join(workdir, "bare.ready")
    try:
        os.unlink(ready)
    except OSError:
        pass
    p = subprocess.Popen(["ip", "netns", "exec", run.lab.router, sys.executable, os.path.join(HERE, "nfq_bare.py"),
                          "--queue", str(queue_num), "--seconds", str(seconds + 6), "--ready", ready],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        B.wait_file(ready, 10, p)
        res = window(run, queue_num, conf, seconds, p.pid)
    finally:
        p.terminate()
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
    run.start_daemon()
    return res


def measure(run, workdir, seconds=3.0, reps=2, log=print):
    queue_num = 7100
    learned = learn(run)
    conf = os.path.join(workdir, "ctl.cfg")
    out = {}
    for scenario in ("ike_known", "l2tp_ctl", "ike_new"):
        flood_conf(run, learned, scenario, conf)
        rows = {"bare": [], "daemon": []}
        for rep in range(reps):
            for who in (("bare", "daemon") if rep % 2 == 0 else ("daemon", "bare")):
                if who == "bare":
                    res = bare(run, queue_num, conf, seconds, workdir)
                else:
                    s0 = ask(run.control, "stats")["summary"]
                    res = window(run, queue_num, conf, seconds, run.daemon.pid, probe_control=True)
                    s1 = ask(run.control, "stats", timeout=10)["summary"]
                    res["flows"] = s1["flows"]
                    res["table_full"] = s1["stats"]["table_full"] - s0["stats"]["table_full"]
                rows[who].append(res)
                log("  control %-9s %-6s rep %d: %7d pkt/s processed, %s pkt per CPU-s (CPU share %s; offered %d/s, "
                    "dropped %d/s)%s" % (scenario, who, rep, res["pps"], res["pps_per_cpu"], res["cpu_share"],
                                         res["offered_pps"], res["dropped_pps"],
                    "" if who == "bare" else ", control socket max %s ms" % res.get("control_ms_max")))
        b = B.median([r["pps"] for r in rows["bare"]])
        d = B.median([r["pps"] for r in rows["daemon"]])
        bc = B.median([r["pps_per_cpu"] for r in rows["bare"] if r["pps_per_cpu"]])
        dc = B.median([r["pps_per_cpu"] for r in rows["daemon"] if r["pps_per_cpu"]])
        out[scenario] = {"bare_pps": round(b), "daemon_pps": round(d), "ratio_wall": round(d / float(b), 3),
                         "bare_pps_per_cpu": round(bc), "daemon_pps_per_cpu": round(dc),
                         "ratio": round(dc / float(bc), 3),
                         "daemon_us_per_pkt": round(1e6 / dc, 1), "bare_us_per_pkt": round(1e6 / bc, 1),
                         "control_ms_max": max([r.get("control_ms_max") or 0 for r in rows["daemon"]]),
                         "control_failures": sum(r.get("control_failures", 0) for r in rows["daemon"]),
                         "runs": rows}
    out["element_op_us"] = element_ops()
    log("  element op, us of CPU each: %s" % out["element_op_us"])
    out["target"] = 0.5
    out["min_ratio"] = min(out[s]["ratio"] for s in ("ike_known", "l2tp_ctl", "ike_new"))
    return out


ELEMENT_OPS = r"""
import json, time
from nat.kernel import Kernel
from passthrough.config import Config
k = Kernel(Config({}))
def op(i, verb):
    o = (verb, "esp_zone", ("203.0.113.2", 0x10000 + i))
    return o + (4097, "esp 192.168.1.10 4500 4500 %d" % i) if verb == "add" else o
out = {}
for mode in ("netlink", "libnftables"):
    if mode == "libnftables":
        k._writer = False  # as after a netlink failure
    c = time.process_time()
    failed = sum(k.apply([op(i, "add")]) for i in range(N)) + sum(k.apply([op(i, "del")]) for i in range(N))
    out[mode] = round((time.process_time() - c) / (2 * N) * 1e6, 1)
    assert failed == 0, (mode, failed)
print(json.dumps(out))
"""


def element_ops(n=2000, ns="pt-b-ops"):
    """us of CPU per element op, {netlink, libnftables} (see the module's docstring)."""
    from nat import nftables as X
    from passthrough.config import Config
    subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        text = X.replace_table("ip", X.TABLE, X.render_fastpath(Config({}), "xt", None))  # xt: no nft_queue needed
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", "N = %d\n" % n + ELEMENT_OPS],
                           capture_output=True, text=True, cwd=os.path.dirname(HERE), timeout=300)
        if p.returncode != 0:
            return {"error": p.stderr.strip()[-300:]}
        return json.loads(p.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns])
