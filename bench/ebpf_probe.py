#!/usr/bin/env python3
"""Probe: what an eBPF fast path for known VPN data gains here (root; not part of bench/run.py).

    apt-get install -y clang libbpf-dev bpftool
    .venv/bin/python bench/ebpf_probe.py [--reps 3] [--seconds 2]

Builds bench/ebpf/natt_fast.c, brings up the kernel-only lab (pt-be-*), learns the NAT-T flow,
and blasts outbound NAT-T data (100 B) alternately through the kernel's NAT and through the
program on the router's LAN port (tc clsact ingress, direct action): (source, SPI) looked up in a
BPF hash map, source address, TTL and checksums rewritten, `bpf_redirect` to the WAN port.
Checks that the program carried the blast (a counting forward chain sees none of it) and that
the server's tcpdump finds the checksums good; prints pkt/s of both and their ratio as JSON.
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

SRC = os.path.join(ROOT, "bench", "ebpf", "natt_fast.c")
COUNT_FORWARD = ("table ip pt_probe {\n\tchain forwarded {\n\t\ttype filter hook forward priority 0; policy accept;\n"
                 "\t\tcounter\n\t}\n}\n")


def bpftool(*args):
    return json.loads(subprocess.run(["bpftool", "-j"] + list(args), capture_output=True, text=True, check=True).stdout)


def build(workdir):
    obj = os.path.join(workdir, "natt_fast.o")
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/%s-linux-gnu" % os.uname().machine,
                    "-c", SRC, "-o", obj], check=True)
    return obj


def attach(lab, obj):
    """The program on the LAN port, and the learned flow in its map."""
    B.nsexec(lab.router, "tc", "qdisc", "add", "dev", "br-lan", "clsact")
    B.nsexec(lab.router, "tc", "filter", "add", "dev", "br-lan", "ingress", "bpf", "da", "obj", obj, "sec", "tc")
    shown = json.loads(B.nsexec(lab.router, "tc", "-j", "filter", "show", "dev", "br-lan", "ingress").stdout)
    prog_id = [f["options"]["prog"]["id"] for f in shown if "prog" in f.get("options", {})][0]
    map_id = bpftool("prog", "show", "id", str(prog_id))["map_ids"][0]
    ifindex = json.loads(B.nsexec(lab.router, "ip", "-j", "link", "show", "wan").stdout)[0]["ifindex"]
    key = socket.inet_aton(lab.lan_ip(0)) + D.SPI_NATT.to_bytes(4, "big")  # as the bytes sit in the packet
    val = (socket.inet_aton(B.wan_ip()) + ifindex.to_bytes(4, sys.byteorder)
           + bytes.fromhex(B.mac_of(lab.router, "wan").replace(":", ""))
           + bytes.fromhex(B.mac_of(lab.server, "eth0").replace(":", "")))
    subprocess.run(["bpftool", "map", "update", "id", str(map_id), "key"] + ["0x%02x" % b for b in key]
                   + ["value"] + ["0x%02x" % b for b in val], check=True)


def detach(lab):
    B.nsexec(lab.router, "tc", "qdisc", "del", "dev", "br-lan", "clsact", check=False)


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
    pps = {"kernel": [], "ebpf": []}
    check = None
    try:
        frame = D.frames(run, D.learn(run), 100)[("natt", "up")]
        B.nsexec(L.router, "nft", "-f", "-", input=COUNT_FORWARD)
        for rep in range(a.reps):
            for mode in ("kernel", "ebpf"):
                detach(L)
                if mode == "ebpf":
                    attach(L, obj)
                cap = None
                if mode == "ebpf" and rep == 0:
                    cap = subprocess.Popen(["ip", "netns", "exec", L.server, "tcpdump", "-c", "3", "-nvv", "-i", "eth0",
                                            "udp port 4500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                    time.sleep(0.5)
                f0 = forwarded(L)
                pps[mode].append(D.blast(run, frame, "up", a.seconds, work)["pps"])
                fwd = forwarded(L) - f0
                print("  %-6s rep %d: %8d pkt/s, %d forwarded by the IP stack" % (mode, rep, pps[mode][-1], fwd), flush=True)
                if mode == "ebpf" and fwd > pps[mode][-1] * a.seconds * 0.01:
                    raise RuntimeError("the blast went through the IP stack, not the program")
                if cap is not None:
                    check = cap.communicate(timeout=10)[0]
                    if "udp sum ok" not in check or "bad" in check or "ttl 63" not in check:
                        raise RuntimeError("rewritten packets look wrong:\n" + check)
        detach(L)
    finally:
        run.down()
    k, e = B.median(pps["kernel"]), B.median(pps["ebpf"])
    print(json.dumps({"kernel_pps": round(k), "ebpf_pps": round(e), "ratio": round(e / k, 3), "all": pps}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
