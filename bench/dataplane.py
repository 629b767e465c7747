"""Data plane: plain kernel NAT (the lab's masquerade only) vs passthrough active, as shipped
(option offload 'auto': learned flows carried by the BPF program, nat/bpf/offload.c) and with
offload 'off' (the nft path: zones per packet).

trafgen (netsniff-ng) blasts one static frame per case from a LAN host (up) or from the server
(down) for a fixed window; the receiving namespace counts and drops the frames in a prerouting
chain (nft counter). trafgen runs on one CPU (-P 1): with veth the whole forwarding path runs in
the sender's softirq context, so the received rate is the per-packet cost of the router path.
The passthrough cases first learn each flow with the lab client (SPI / tunnel id in the kernel
maps; with offload, wait until the program carries them) and check afterwards that the blast was
not queued (daemon stats 'queued' unchanged); with offload, that the program carried every
received packet (its 'carried' counter), so the number is the BPF path's and not the stack's.
"""
import os
import subprocess
import time

from bench import lablib as B

SPI_NATT = 0x51000
SPI_ESP = 0x52000
L2TP_TID = 4711
L2TP_SESSION = 7
OTHER_PORT = 5000  # plain UDP that is no VPN: what passthrough's hooks cost everybody else
OTHER_TCP = (40000, 443)  # and TCP (LAN port, server port)
VPN_FLOWS = ("natt", "esp", "l2tp")
STEP = 0x1000  # the lab responder answers with SPI + STEP
# "linear": the senders' frames arrive with their headers linear, as from a router's Ethernet
# driver (lablib.linear_headers, installed by bench/run.py); "fragmented": as trafgen's TX ring
# makes them (all but the MAC header in page fragments: nft payload matches take the slow path)
HEADERS = "linear"


def senders(run):
    return [run.lab.lan_hosts[0], run.lab.server]


def learn(run):
    """Run the lab clients once so the flows exist (conntrack; with the daemon: kernel maps)."""
    srv = run.lab.server_ip(0)
    natt = run.client(0, "natt-esp", "--server", srv, "--spi", hex(SPI_NATT), "--count", 3, "--wait", 0.3,
                      "--interval", 0.05)
    esp = run.client(0, "esp", "--server", srv, "--spi", hex(SPI_ESP), "--count", 3, "--wait", 0.3,
                     "--interval", 0.05)
    l2tp = run.client(0, "l2tp", "--server", srv, "--tid", L2TP_TID, "--count", 3, "--wait", 0.3,
                      "--interval", 0.05)
    for name, s in (("natt", natt), ("esp", esp), ("l2tp", l2tp)):
        if not s.get("replies"):
            raise RuntimeError("learning %s flow failed: %s" % (name, s))
    return {"l2tp_peer_tid": l2tp["peer_tid"]}


def frames(run, learned, size):
    """{(flow, direction): frame bytes}."""
    L = run.lab
    lan, srv, wan = L.lan_ip(0), L.server_ip(0), B.wan_ip()
    hmac, rlan = B.mac_of(L.lan_hosts[0], "eth0"), B.mac_of(L.router, "br-lan")
    smac, rwan = B.mac_of(L.server, "eth0"), B.mac_of(L.router, "wan")
    out = {}
    up = lambda proto, l4: B.ether(rlan, hmac, B.ipv4(lan, srv, proto, l4))  # noqa: E731
    down = lambda proto, l4: B.ether(rwan, smac, B.ipv4(srv, wan, proto, l4))  # noqa: E731
    out[("natt", "up")] = up(17, B.udp(lan, srv, 4500, 4500, B.esp_payload(SPI_NATT, 1, size, True)))
    out[("natt", "down")] = down(17, B.udp(srv, wan, 4500, 4500, B.esp_payload(SPI_NATT + STEP, 1, size, True)))
    out[("esp", "up")] = up(50, B.esp_payload(SPI_ESP, 1, size, False))
    out[("esp", "down")] = down(50, B.esp_payload(SPI_ESP + STEP, 1, size, False))
    out[("l2tp", "up")] = up(17, B.udp(lan, srv, 1701, 1701, B.l2tp_data(learned["l2tp_peer_tid"], L2TP_SESSION, size)))
    out[("l2tp", "down")] = down(17, B.udp(srv, wan, 1701, 1701, B.l2tp_data(L2TP_TID, L2TP_SESSION, size)))
    # Not learned: the up blast (first) makes the conntrack entry the down blast answers.
    other = B.pad_to(b"", size, 28)
    out[("other", "up")] = up(17, B.udp(lan, srv, OTHER_PORT, OTHER_PORT, other))
    out[("other", "down")] = down(17, B.udp(srv, wan, OTHER_PORT, OTHER_PORT, other))
    seg = B.pad_to(b"", size, 40)  # TCP the same way: a web connection's ACKs and data
    out[("tcp", "up")] = up(6, B.tcp(lan, srv, OTHER_TCP[0], OTHER_TCP[1], seg))
    out[("tcp", "down")] = down(6, B.tcp(srv, wan, OTHER_TCP[1], OTHER_TCP[0], seg))
    return out


def blast(run, frame, direction, seconds, workdir, warmup=0.3):
    L = run.lab
    if direction == "up":
        tx_ns, rx_ns, match = L.lan_hosts[0], L.server, "ip saddr %s" % B.wan_ip()
    else:
        tx_ns, rx_ns, match = L.server, L.lan_hosts[0], "ip saddr %s" % L.server_ip(0)
    conf = os.path.join(workdir, "dp.cfg")
    with open(conf, "w") as f:
        f.write(B.trafgen_conf([frame]))
    B.sink_install(rx_ns, match)
    gen = B.Trafgen(tx_ns, "eth0", conf, cpus=1, qdisc=HEADERS == "linear").start()
    try:
        time.sleep(warmup)
        p0, b0 = B.sink_read(rx_ns)
        c0, t0 = cpu_busy(SENDER_CPU), time.monotonic()
        time.sleep(seconds)
        p1, b1 = B.sink_read(rx_ns)
        c1, t1 = cpu_busy(SENDER_CPU), time.monotonic()
    finally:
        err = gen.stop()
        B.sink_remove(rx_ns)
    dt = t1 - t0
    pps = (p1 - p0) / dt
    if pps == 0:
        raise RuntimeError("no packets received (%s %s); trafgen: %s" % (direction, match, err.strip()[-300:]))
    ip_bytes = len(frame) - 14
    busy = c1 - c0
    return {"pps": round(pps), "mbps": round(pps * ip_bytes * 8 / 1e6, 1),
            "pps_cpu": round((p1 - p0) / busy) if busy > 0 else None, "cpu_busy": round(busy / dt, 3)}


SENDER_CPU = 0  # trafgen -P 1 runs its one worker there
_TICK = float(os.sysconf("SC_CLK_TCK"))


def cpu_busy(cpu):
    """Seconds the CPU ran anything (user, system, irq, softirq), steal left out: the whole
    router path runs in the sender's softirq, so packets per busy second is its cost without
    the time the hypervisor gave the CPU to somebody else."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu%d " % cpu):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[5] + v[6]) / _TICK
    return 0.0


def offload_status(run):
    from passthrough.cli import ask
    return ask(run.control, "stats")["summary"]["offload"]


def wait_offloaded(run, pairs=3, timeout=12.0, relearn=None):
    """With offload active, wait until the learned flows are carried by the program. relearn:
    for a later frame size, when flows idle since the last one lost their conntrack entries
    just after the daemon last looked (it looks every 10 s and sends such pairs back to the
    stack): learning again then goes through the stack and makes the entry they need."""
    if not offload_status(run)["active"]:
        return False
    for attempt in range(3):
        deadline = time.monotonic() + timeout
        while offload_status(run)["pairs"] < pairs:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        else:
            return True
        if relearn is None:
            break
        relearn()
    raise RuntimeError("flows not offloaded within %.0f s: %s" % (timeout, offload_status(run)))


def queued(run):
    if run.daemon is None:
        return None
    from passthrough.cli import ask
    return ask(run.control, "stats")["summary"]["stats"]["queued"]


def measure(kernel_run, pt_run, workdir, sizes=(100, 1400), seconds=2.0, reps=3, log=print, nft_run=None):
    """Labs side by side: `kernel_run` has only the lab masquerade (no daemon, no passthrough
    tables), `pt_run` runs the daemon as shipped, `nft_run` (optional) the daemon with offload
    'off'. Each case is blasted in every lab in rotating order, so background load hits all
    modes alike; medians are reported."""
    flows = VPN_FLOWS + ("other", "tcp")
    runs = {"kernel": kernel_run, "passthrough": pt_run}
    if nft_run is not None:
        runs["nft_path"] = nft_run
    modes = sorted(runs, key=("kernel", "passthrough", "nft_path").index)
    daemons = [m for m in modes if m != "kernel"]
    raw = []
    q_total = 0
    offloaded = {}
    for size in sizes:
        if size != sizes[0]:
            # Flows idle since the last size may have lost their conntrack entries: give the
            # daemons one look at them (every 10 s), so learning goes through the stack
            time.sleep(11)
        learned = dict((m, learn(runs[m])) for m in modes)
        for m in daemons:
            offloaded[m] = wait_offloaded(runs[m], relearn=lambda m=m: learn(runs[m]))
        q0 = dict((m, queued(runs[m])) for m in daemons)
        fr = dict((m, frames(runs[m], learned[m], size)) for m in modes)
        for flow in flows:
            for direction in ("up", "down"):
                for rep in range(reps):
                    order = modes[rep % len(modes):] + modes[:rep % len(modes)]
                    for mode in order:
                        c0 = offload_status(runs[mode])["program"]["carried"] \
                            if offloaded.get(mode) and flow in VPN_FLOWS else None
                        res = blast(runs[mode], fr[mode][(flow, direction)], direction, seconds, workdir)
                        if c0 is not None:
                            res["carried"] = offload_status(runs[mode])["program"]["carried"] - c0
                            if res["carried"] < res["pps"] * seconds:
                                raise RuntimeError("%s %s %s: the program carried %d packets, the receiver got %d/s: "
                                                   "not the BPF path" % (mode, flow, direction, res["carried"], res["pps"]))
                        res.update(rep=rep, mode=mode, size=size, flow=flow, direction=direction)
                        raw.append(res)
                        log("  dataplane %-11s %-4s %-4s %4d B rep %d: %8d pkt/s %8.1f Mbit/s" % (
                            mode, flow, direction, size, rep, res["pps"], res["mbps"]))
        q_total += sum(queued(runs[m]) - q0[m] for m in daemons)
    summary = summarize(raw, sizes, flows, modes)
    summary["queued_during_blast"] = q_total
    summary["offload"] = offloaded.get("passthrough", False)
    return summary, raw


def summarize(raw, sizes, flows, modes=("kernel", "passthrough")):
    rows = []
    for size in sizes:
        for flow in flows:
            for direction in ("up", "down"):
                row = {"flow": flow, "direction": direction, "size": size}
                for mode in modes:
                    vals = [r for r in raw if r.get("mode") == mode and r.get("flow") == flow
                            and r.get("size") == size and r.get("direction") == direction]
                    row[mode + "_pps"] = round(B.median([r["pps"] for r in vals]))
                    row[mode + "_mbps"] = round(B.median([r["mbps"] for r in vals]), 1)
                    row[mode + "_pps_all"] = [r["pps"] for r in vals]
                # The ratio is the median of each repetition's own ratio (the modes run back to
                # back within a repetition, so a slow minute of the machine hits both sides)
                for mode in modes[1:]:
                    name = "ratio" if mode == "passthrough" else mode + "_ratio"
                    pairs = list(zip(row[mode + "_pps_all"], row["kernel_pps_all"]))
                    row[name] = round(B.median([a / float(b) for a, b in pairs]), 3)
                    row[name + "_of_medians"] = round(row[mode + "_pps"] / float(row["kernel_pps"]), 3)
                rows.append(row)
    vpn = [r for r in rows if r["flow"] in VPN_FLOWS]  # the target is about VPN data
    other = [r for r in rows if r["flow"] not in VPN_FLOWS]
    out = {"rows": rows, "min_ratio": min(r["ratio"] for r in vpn),
           "median_ratio": round(B.median([r["ratio"] for r in vpn]), 3), "target": 0.95}
    if other:
        out["other_min_ratio"] = min(r["ratio"] for r in other)
    if "nft_path" in modes:
        out["nft_path_min_ratio"] = min(r["nft_path_ratio"] for r in vpn)
        out["nft_path_median_ratio"] = round(B.median([r["nft_path_ratio"] for r in vpn]), 3)
        if other:
            out["nft_path_other_min_ratio"] = min(r["nft_path_ratio"] for r in other)
    return out


def tool_check():
    missing = [t for t in ("trafgen",) if subprocess.run(["which", t], capture_output=True).returncode]
    return missing
