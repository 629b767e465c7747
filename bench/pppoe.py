"""VPN data over a PPPoE WAN (issue 13 item 3): the QEMU router, side by side in one boot.

The host's kernel has no PPP, so this runs in the QEMU test image (openwrt_pkg/qemu), where
the router dials Debian's pppoe-server in an ISP namespace of the guest exactly as the QEMU
test `test_bpf_offload_on_a_pppoe_wan_carries_a_real_l2tp_ipsec_client` does, and a real
L2TP/IPsec client (c1, strongSwan, NAT-T) behind the router brings up its tunnel to s1 behind
the ISP. Then trafgen on the host blasts copies of one of c1's own ESP-in-UDP packets (its
outbound SPI, a marker sequence number, from c1's address) into the router's LAN port through
the tap, and the ISP namespace counts and drops them at the ingress of its PPPoE Ethernet
(netdev hook: the PPPoE session header, PPP protocol 0x0021, c1's SPI and the marker), so
nothing past the router's work is measured. Modes, one after the other in the same boot:

  offload   passthrough as shipped: the flow carried by the BPF program (LAN ingress, redirect
            to pppoe-wan)
  nft_path  passthrough with offload 'off': classify zones each packet, conntrack, fw4's NAT
  kernel    passthrough stopped: fw4's masquerade only (kernel NAT over PPPoE)

Rates are guest pkt/s (counter deltas over the guest's own clock, read in one command), under
TCG (no KVM here) on one vCPU: absolute numbers are far below hardware, the ratios are what
the runs compare. Upstream only: the ISP side of the guest cannot be reached from the host
(its PPPoE Ethernet is a veth inside the guest), so no generator can feed the down direction
without sharing the guest's single vCPU with the router it measures.
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

from bench import lablib as B

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "qemu"))
sys.path.insert(0, os.path.join(REPO, "openwrt_pkg", "qemu"))

IMAGE = os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image-test")
C1, S1 = "192.168.1.20", "203.0.113.20"
MARK_SEQ = 0x7A7A7A7A  # the blast's ESP sequence number: the ISP counts only these
MODES = ("offload", "nft_path", "kernel")
ISP_TABLE = "ptbench"


def _isp_counter_text(spi):
    # the ISP's eth0 receives Ethernet (14) + PPPoE session header (6) + PPP protocol (2) + IP
    m = ("ether type 0x8864 @ll,160,16 0x0021 @ll,248,8 17 @ll,304,32 0x%08x @ll,352,16 4500 "
         "@ll,400,32 0x%08x @ll,432,32 0x%08x" % (struct.unpack("!I", bytes(map(int, S1.split("."))))[0], spi, MARK_SEQ))
    return ("table netdev %s {}\ndelete table netdev %s\ntable netdev %s {\n\tcounter rx {}\n"
            "\tchain in { type filter hook ingress device \"eth0\" priority -500; policy accept; %s counter name rx drop; }\n}\n"
            % (ISP_TABLE, ISP_TABLE, ISP_TABLE, m))


def _read(lab):
    """(guest seconds, packets counted at the ISP, packets the router's LAN port received)."""
    out = lab.sh("ip netns exec isp nft -j list counter netdev %s rx; cat /proc/uptime; "
                 "cat /sys/class/net/eth0/statistics/rx_packets" % ISP_TABLE)
    lines = out.strip().splitlines()
    got = json.loads(lines[0])
    pk = [o["counter"]["packets"] for o in got["nftables"] if "counter" in o][0]
    return float(lines[1].split()[0]), pk, int(lines[2])


def _outbound_spi(lab):
    """c1's outbound ESP SPI (its SA from c1 to s1, UDP-encapsulated: NAT-T)."""
    out = lab.sh("ip netns exec c1 ip xfrm state")
    for block in re.split(r"\n(?=src )", out):
        if block.startswith("src %s dst %s" % (C1, S1)) and "proto esp" in block:
            return int(re.search(r"spi (0x[0-9a-f]+)", block).group(1), 16)
    raise RuntimeError("no outbound SA of c1 in:\n" + out)


def _frames(lab, host_ns, spi, sizes):
    router_mac = lab.sh("cat /sys/class/net/br-lan/address").strip()
    host_mac = B.mac_of(host_ns, "eth0")
    out = {}
    for size in sizes:
        esp = struct.pack("!II", spi, MARK_SEQ)
        payload = B.pad_to(esp, size, 28)
        out[size] = B.ether(router_mac, host_mac, B.ipv4(C1, S1, 17, B.udp(C1, S1, 4500, 4500, payload)))
    return out


def _mode(lab, mode):
    g = lab.guest
    if mode == "offload":
        lab.uci_set(offload="auto")
    elif mode == "nft_path":
        lab.uci_set(offload="off")
    if mode == "kernel":
        g.run("/etc/init.d/passthrough stop", timeout=60)
        lab.wait_for(lambda: lab.daemon_pid() is None, 30, interval=0.3, what="passthrough stopped")
        return
    if not lab.daemon_pid():
        g.run("/etc/init.d/passthrough start", timeout=60)
        lab.wait_daemon()
    g.run("reload_config")
    want = mode == "offload"
    lab.wait_for(lambda: bool(lab.offload().get("active")) == want, 30, interval=0.3,
                 what="offload %s" % ("on" if want else "off"))
    if want:
        lab.wait_pings_carried(60, "c1's pings carried by the program over PPPoE")


def _blast(lab, host_ns, frame, seconds, workdir, rate):
    conf = os.path.join(workdir, "pppoe.cfg")
    with open(conf, "w") as f:
        f.write(B.trafgen_conf([frame]))
    t = B.Trafgen(host_ns, "eth0", conf)
    t.argv += ["-b", rate]
    t.start()
    try:
        time.sleep(0.5)  # warm-up: the guest's queues filled
        t0, c0, r0 = _read(lab)
        time.sleep(seconds)
        t1, c1, r1 = _read(lab)
    finally:
        err = t.stop()
    if c1 == c0 and r1 == r0:
        raise RuntimeError("nothing reached the router (trafgen: %s)" % err.strip()[-300:])
    dt = t1 - t0
    return {"pps": int((c1 - c0) / dt), "received_pps": int((r1 - r0) / dt), "seconds": round(dt, 2)}


def measure(workdir, seconds=3.0, reps=3, sizes=(100, 1400), rate="100000pps", log=print):
    """{"modes": {mode: {size: {"all": [...], "pps": median, "received_pps": ...}}},
    "ratios": {"offload_vs_kernel": {size: r}, "nft_path_vs_kernel": {...}}, "accel": ...}."""
    import ptqemu
    from qemulab import QemuLab
    if not shutil.which("qemu-system-x86_64"):
        raise RuntimeError("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    os.makedirs(workdir, exist_ok=True)
    router = ptqemu.Router(IMAGE, workdir=workdir)
    lab = None
    out = {"unit": "pkt/s at the ISP, guest clock", "rate_offered": rate, "direction": "up", "modes": {}}
    try:
        router.up()
        g = router.guest
        out["accel"] = g.accel
        lab = QemuLab(router, workdir)
        lab.install("opkg")
        lab.wait_daemon()
        lab.pppoe_wan_up()  # the guest is thrown away after: nothing to undo
        r = g.run("VPNLAB_WAN=pppoe pt-vpnlab up", timeout=180)
        if r.rc != 0:
            raise RuntimeError("pt-vpnlab up over PPPoE: %r" % r)
        _mode(lab, "offload")
        spi = _outbound_spi(lab)
        lab.sh("ip netns exec isp nft -f - <<'EOF'\n%sEOF" % _isp_counter_text(spi))
        host_ns = router.topo.lan_hosts[0]
        frames = _frames(lab, host_ns, spi, sizes)
        runs = dict(((m, z), []) for m in MODES for z in sizes)
        for rep in range(reps):  # modes interleaved: a slow phase of the host hits all of them
            for mode in MODES:
                _mode(lab, mode)
                for size in sizes:
                    r = _blast(lab, host_ns, frames[size], seconds, workdir, rate)
                    runs[(mode, size)].append(r)
                    log("  pppoe %-8s %4d B rep %d: %7d pkt/s forwarded (the router's LAN port received %d)" % (
                        mode, size, rep, r["pps"], r["received_pps"]))
                if mode == "offload":
                    out["carried_after_rep%d" % rep] = lab.carried()
        for mode in MODES:
            res = out["modes"][mode] = {}
            for size in sizes:
                rr = runs[(mode, size)]
                res[str(size)] = {"all": [x["pps"] for x in rr], "pps": B.median([x["pps"] for x in rr]),
                                  "received_pps": B.median([x["received_pps"] for x in rr])}
        ratios = out["ratios"] = {}
        for mode in ("offload", "nft_path"):  # median of the per-repetition ratios
            ratios["%s_vs_kernel" % mode] = dict(
                (str(z), round(B.median([a["pps"] / max(1, b["pps"]) for a, b in zip(runs[(mode, z)], runs[("kernel", z)])]), 3))
                for z in sizes)
        return out
    finally:
        if lab is not None:
            g = router.guest
            g.run("ip netns exec isp nft delete table netdev %s" % ISP_TABLE)
            g.run("pt-vpnlab down", timeout=90)
        router.down()
