#!/usr/bin/env python3
"""Probe: what an eBPF fast path for known VPN data gains here (root; not part of bench/run.py).

    apt-get install -y clang libbpf-dev bpftool
    .venv/bin/python bench/ebpf_probe.py [--reps 3] [--seconds 2]

Builds bench/ebpf/vpn_fast.c, brings up the kernel-only lab (pt-be-*), learns the flows, and
blasts the data-plane part's six 100 B cases (NAT-T, raw ESP, L2TP data; up and down)
alternately through the kernel's NAT and through the program on both router ports (tc clsact
ingress, direct action): flow looked up by (port, source, protocol, SPI / tunnel id) in a BPF
hash map, one address + TTL + checksums rewritten, `bpf_redirect` to the other port. Checks
that the program carried each blast (a counting forward chain sees none of it) and that the
receiver's tcpdump finds the headers good; prints pkt/s of both and their ratios as JSON.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import lablib as B  # noqa: E402
from bench import dataplane as D  # noqa: E402
from passthrough.lab.harness import LabRun  # noqa: E402

SRC = os.path.join(ROOT, "bench", "ebpf", "vpn_fast.c")
COUNT_FORWARD = ("table ip pt_probe {\n\tchain forwarded {\n\t\ttype filter hook forward priority 0; policy accept;\n"
                 "\t\tcounter\n\t}\n}\n")
PORTS = ("br-lan", "wan")
PROTO = {"natt": 4500, "esp": 50, "l2tp": 1701}


def bpftool(*args):
    return json.loads(subprocess.run(["bpftool", "-j"] + list(args), capture_output=True, text=True, check=True).stdout)


def build(workdir):
    obj = os.path.join(workdir, "vpn_fast.o")
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/%s-linux-gnu" % os.uname().machine,
                    "-c", SRC, "-o", obj], check=True)
    return obj


def entries(lab, learned):
    """(key, value) bytes of struct key / struct out (vpn_fast.c) for the six learned flows."""
    def mac(ns, dev):
        return bytes.fromhex(B.mac_of(ns, dev).replace(":", ""))

    def u32(n):
        return n.to_bytes(4, sys.byteorder)

    ifindex = {dev: json.loads(B.nsexec(lab.router, "ip", "-j", "link", "show", dev).stdout)[0]["ifindex"]
               for dev in PORTS}
    up_out = (socket.inet_aton(B.wan_ip()) + u32(ifindex["wan"]) + mac(lab.router, "wan") + mac(lab.server, "eth0")
              + u32(0))
    down_out = (socket.inet_aton(lab.lan_ip(0)) + u32(ifindex["br-lan"]) + mac(lab.router, "br-lan")
                + mac(lab.lan_hosts[0], "eth0") + u32(1))
    ids = {("natt", "up"): D.SPI_NATT.to_bytes(4, "big"), ("esp", "up"): D.SPI_ESP.to_bytes(4, "big"),
           ("l2tp", "up"): learned["l2tp_peer_tid"].to_bytes(2, "big") + b"\0\0",
           ("natt", "down"): (D.SPI_NATT + D.STEP).to_bytes(4, "big"), ("esp", "down"): (D.SPI_ESP + D.STEP).to_bytes(4, "big"),
           ("l2tp", "down"): D.L2TP_TID.to_bytes(2, "big") + b"\0\0"}
    out = []
    for (flow, direction), ident in sorted(ids.items()):
        src, port, val = (lab.lan_ip(0), "br-lan", up_out) if direction == "up" else (lab.server_ip(0), "wan", down_out)
        out.append((u32(ifindex[port]) + socket.inet_aton(src) + ident + u32(PROTO[flow]), val))
    return out


def attach(lab, obj, elems):
    """The program on both ports (one map each), every flow in both maps."""
    for dev in PORTS:
        B.nsexec(lab.router, "tc", "qdisc", "add", "dev", dev, "clsact")
        B.nsexec(lab.router, "tc", "filter", "add", "dev", dev, "ingress", "bpf", "da", "obj", obj, "sec", "tc")
        shown = json.loads(B.nsexec(lab.router, "tc", "-j", "filter", "show", "dev", dev, "ingress").stdout)
        prog_id = [f["options"]["prog"]["id"] for f in shown if "prog" in f.get("options", {})][0]
        map_id = bpftool("prog", "show", "id", str(prog_id))["map_ids"][0]
        for key, val in elems:
            subprocess.run(["bpftool", "map", "update", "id", str(map_id), "key"] + ["0x%02x" % b for b in key]
                           + ["value"] + ["0x%02x" % b for b in val], check=True)


def detach(lab):
    for dev in PORTS:
        B.nsexec(lab.router, "tc", "qdisc", "del", "dev", dev, "clsact", check=False)


def forwarded(lab):
    out = B.nsexec(lab.router, "nft", "list", "chain", "ip", "pt_probe", "forwarded").stdout
    return int(out.split("counter packets ")[1].split()[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args(argv)
    work = "/tmp/passthrough-bench-ebpf"
    os.makedirs(work, exist_ok=True)
    obj = build(work)
    run = LabRun(prefix="pt-be-", workdir=work).up(start_daemon=False)
    L = run.lab
    pps = {}
    try:
        learned = D.learn(run)
        frames = D.frames(run, learned, 100)
        elems = entries(L, learned)
        B.nsexec(L.router, "nft", "-f", "-", input=COUNT_FORWARD)
        for rep in range(a.reps):
            for mode in ("kernel", "ebpf"):
                detach(L)
                if mode == "ebpf":
                    attach(L, obj, elems)
                for case, frame in sorted(frames.items()):
                    name = "%s-%s" % case
                    cap = None
                    if mode == "ebpf" and rep == 0:
                        rx = L.server if case[1] == "up" else L.lan_hosts[0]
                        cap = subprocess.Popen(["ip", "netns", "exec", rx, "tcpdump", "-c", "3", "-nvv", "-i", "eth0",
                                                "ip src %s" % (B.wan_ip() if case[1] == "up" else L.server_ip(0))],
                                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                        time.sleep(0.5)
                    f0 = forwarded(L)
                    r = D.blast(run, frame, case[1], a.seconds, work)["pps"]
                    pps.setdefault(name, {}).setdefault(mode, []).append(r)
                    fwd = forwarded(L) - f0
                    print("  %-6s %-9s rep %d: %8d pkt/s, %d forwarded by the IP stack" % (mode, name, rep, r, fwd),
                          flush=True)
                    if mode == "ebpf" and fwd > r * a.seconds * 0.01:
                        raise RuntimeError("%s went through the IP stack, not the program" % name)
                    if cap is not None:
                        seen = cap.communicate(timeout=10)[0]
                        if "bad" in seen or "ttl 63" not in seen or (case[0] != "esp" and "udp sum ok" not in seen):
                            raise RuntimeError("%s: rewritten packets look wrong:\n%s" % (name, seen))
        detach(L)
    finally:
        run.down()
    res = {}
    for name, by in sorted(pps.items()):
        k, e = B.median(by["kernel"]), B.median(by["ebpf"])
        res[name] = {"kernel_pps": round(k), "ebpf_pps": round(e), "ratio": round(e / k, 3)}
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
