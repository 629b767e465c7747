"""Data-plane floor: what each piece of a per-packet classifier costs on this kernel.

Passthrough steers every VPN data packet into its host's conntrack zone before conntrack runs,
so each packet crosses at least a prerouting base chain, a direction test, a protocol test, a
demux map lookup and `ct zone set`. This part adds those pieces one at a time to the
kernel-only lab (no daemon) and blasts the same outbound frames as the data-plane part, so the
result says how close to the kernel-only rate any zone-per-packet design can get here, and where
passthrough's own path stands against that floor.

Steps (each includes the previous ones' kind of work, rules in a scratch table `pt_floor`):
  hook      an empty prerouting base chain at -310
  dispatch  `iifname LAN jump c` and, in c, the protocol test + accept (no zone)
  zone      the same with `ct zone set <constant>` (a conntrack template per packet)
  lookup    the zone from a map keyed like passthrough's (source . SPI, 8 bytes)
  steer     plus a second base chain at -250 whose first rule is a mark test (passthrough's steer)

A second series prices the alternative "zones only for shared remotes" (bench/README.md,
Targets): data of a remote that only one LAN host uses stays in zone 0 (plain conntrack), so
classify only has to pick out control packets, for all six data cases (up and down):
  one_rule      a single `udp dport 1701 accept`: what any rule in the hook costs at all
  gate          the control-only classifier: NAT-T data (non-zero marker) out first, IKE, L2TP
                control (T bit) marked for the queue, everything else untouched
  gate_shared   the same while some other remote is shared: its address tests in front, and
                the steer hook present
  tc_bpf        the gate's control-packet test as classic BPF (tcpdump -ddd) in a tc clsact
                ingress filter on both router ports instead of nft (no action attached: only
                the cost a data packet pays is measured)

A third series prices what ordinary traffic (plain UDP and TCP, no VPN, 100 B, up and down)
pays for each hook passthrough has or had, one piece at a time in the kernel-only lab:
  hook        an empty prerouting base chain at -310
  gate        that chain with classify's head for other traffic (nat/nftables.py GATE: TCP,
              UDP with both ports outside 500-4500 by two range compares, UDP without a VPN
              port by six compares, not UDP/ESP)
  gate_compares  the head of 2026-12-07 (the same without the range rule)
  gate_sets   the head as it was before 2026-12-07 (the UDP ports by two set lookups)
  nat_hook    an empty nat prerouting chain (-110): passthrough's nat_prerouting registers the
              NAT prerouting hook, which the lab's fw4-like firewall does not have (fw4's dstnat
              chain does on a real router)
  table       the daemon's whole fast-path table as rendered (nat/nftables.py, no daemon: its
              heartbeat set stays empty, nothing is queued)
  ipt_hook    the older iptables backend's raw PREROUTING NFQUEUE rule (-300, one mark test)
  steer_hook  the older layout's second nft hook (-250, one mark test)
  tc          the offload program (nat/bpf/offload.o) on the ingress of both router ports, no
              nft rules, attached as the daemon does (tcx on 6.6+): what the BPF path costs
              the packets it does not carry
  tc_clsact   the same program as a clsact filter (how kernels before 6.6 run it)
"""
import os
import subprocess
import sys

from bench import lablib as B
from bench import dataplane as D
from nat.nftables import GATE, NOT_VPN_UDP, VPN_UDP

TABLE = "pt_floor"
ZONE = 4242
# passthrough's steer hook when no queued packet waits for its zone: one mark test.
STEER_CHAIN = ["\tchain steer {", "\t\ttype filter hook prerouting priority -250; policy accept;",
               "\t\tmeta mark & 0x20000000 == 0 accept", "\t}"]


def _table(lines):
    """A transaction that (re)creates the scratch table with these lines inside."""
    return "\n".join(["table ip %s {}" % TABLE, "delete table ip %s" % TABLE, "table ip %s {" % TABLE]
                     + list(lines) + ["}"]) + "\n"


def _pre(rules):
    """The scratch prerouting base chain at -310 (passthrough's classify priority)."""
    return (["\tchain pre {", "\t\ttype filter hook prerouting priority -310; policy accept;"]
            + ["\t\t" + r for r in rules] + ["\t}"])


def _ruleset(step, lan_dev, key_elems):
    """nft text for one step; key_elems: 'addr . spi : zone' strings for the lookup map."""
    rules = {
        "hook": [],
        "dispatch": ["udp dport 4500 accept", "meta l4proto esp accept"],
        "zone": ["udp dport 4500 ct zone set %d accept" % ZONE, "meta l4proto esp ct zone set %d accept" % ZONE],
        "lookup": ["udp dport 4500 ct zone set ip saddr . @th,64,32 map @m accept",
                   "meta l4proto esp ct zone set ip saddr . @th,0,32 map @m accept"],
    }
    inner = rules["lookup" if step == "steer" else step]
    out = ["\tmap m { typeof ip saddr . @th,0,32 : ct zone; elements = { %s } }" % ", ".join(key_elems)]
    out.append("\tchain c {")
    out.extend("\t\t" + r for r in inner)
    out.append("\t}")
    out.extend(_pre([] if step == "hook" else ['iifname "%s" jump c' % lan_dev]))
    if step == "steer":
        out.extend(STEER_CHAIN)
    return _table(out)


STEPS = ("kernel", "hook", "dispatch", "zone", "lookup", "steer")
GATE_STEPS = ("kernel", "one_rule", "gate", "gate_shared", "tc_bpf")
CONTROL_BPF = ("ip and (udp dst port 500 or (udp dst port 4500 and udp[8:4] = 0)"
               " or (udp port 1701 and udp[8] & 0x80 != 0))")
OTHER_REMOTE = "203.0.113.99"  # a remote the lab never talks to, "shared" in gate_shared
QUEUE_MARK = "meta mark set meta mark | 0x10000000"  # as the iptables backend marks for NFQUEUE


def _gate_ruleset(step, lan_dev, wan_dev):
    """nft text for one gate step (see the module doc)."""
    out = ['\tchain ctl { iifname vmap { "%s" : goto q_out, "%s" : goto q_in }; }' % (lan_dev, wan_dev)]
    out.append("\tchain q_out { %s; }" % QUEUE_MARK)
    out.append("\tchain q_in { limit rate over 1000/second accept; %s; }" % QUEUE_MARK)
    out.append("\tchain l2tp_ctl { @th,64,8 & 0x80 == 0x80 goto ctl; }")
    out.append("\tchain shared { }")
    if step == "one_rule":
        pre = ["udp dport 1701 accept"]
    else:
        pre = []
        if step == "gate_shared":
            pre.append('ip daddr %s iifname "%s" goto shared' % (OTHER_REMOTE, lan_dev))
            pre.append('ip saddr %s iifname "%s" goto shared' % (OTHER_REMOTE, wan_dev))
        pre += ["udp dport 4500 @th,64,32 != 0 accept", "udp dport 4500 goto ctl", "udp dport 1701 goto l2tp_ctl",
                "udp dport 500 goto ctl", "udp sport 1701 goto l2tp_ctl"]
    out.extend(_pre(pre))
    if step == "gate_shared":
        out.extend(STEER_CHAIN)
    return _table(out)


def _apply(ns, text):
    if text is None:
        B.nsexec(ns, "nft", "delete", "table", "ip", TABLE, check=False)
    else:
        B.nsexec(ns, "nft", "-f", "-", input=text)


def _summary(raw, steps):
    out = {}
    for case, by_step in raw.items():
        base = B.median(by_step["kernel"])
        out[case] = {}
        for step in steps:
            pps = B.median(by_step[step])
            out[case][step] = {"pps": round(pps), "ns_per_pkt": round(1e9 / pps), "ratio": round(pps / base, 3),
                               "added_ns": round(1e9 / pps - 1e9 / base), "all": by_step[step]}
    return out


def _tc_gate(ns, devs, on):
    """The tc_bpf step: CONTROL_BPF (compiled by tcpdump) on the ingress of `devs`, or nothing."""
    if on:
        code = subprocess.run(["tcpdump", "-ddd", CONTROL_BPF], capture_output=True, text=True, check=True)
        bytecode = ",".join(code.stdout.split("\n")).strip(",")
    for dev in devs:
        B.nsexec(ns, "tc", "qdisc", "del", "dev", dev, "clsact", check=False)
        if on:
            B.nsexec(ns, "tc", "qdisc", "add", "dev", dev, "clsact")
            B.nsexec(ns, "tc", "filter", "add", "dev", dev, "ingress", "bpf", "bytecode", bytecode, "classid", "1:1")


def measure_gate(kernel_run, workdir, seconds=1.0, reps=3, log=print):
    """{"flow-direction": {step: {pps, ns_per_pkt, ratio}}} for the six 100 B data cases."""
    L = kernel_run.lab
    frames = dict((k, v) for k, v in D.frames(kernel_run, D.learn(kernel_run), 100).items() if k[0] != "tcp")
    raw = {"%s-%s" % k: {s: [] for s in GATE_STEPS} for k in frames}
    try:
        for rep in range(reps):
            for step in GATE_STEPS:
                _apply(L.router, None if step in ("kernel", "tc_bpf") else _gate_ruleset(step, "br-lan", "wan"))
                _tc_gate(L.router, ("br-lan", "wan"), step == "tc_bpf")
                # up first: the plain UDP up blast makes the conntrack entry its down blast answers
                for (flow, direction), frame in sorted(frames.items(), key=lambda kv: (kv[0][0], kv[0][1] != "up")):
                    r = D.blast(kernel_run, frame, direction, seconds, workdir)
                    raw["%s-%s" % (flow, direction)][step].append(r["pps"])
                    log("  floor %-4s %-4s %-11s rep %d: %8d pkt/s" % (flow, direction, step, rep, r["pps"]))
    finally:
        _apply(L.router, None)
        _tc_gate(L.router, ("br-lan", "wan"), False)
    return _summary(raw, GATE_STEPS)


def measure(kernel_run, workdir, seconds=1.0, reps=3, log=print):
    """{flow: {step: {pps, ns_per_pkt, ratio}}} for outbound NAT-T and raw ESP data (100 B)."""
    L = kernel_run.lab
    learned = D.learn(kernel_run)
    frames = D.frames(kernel_run, learned, 100)
    lan = L.lan_ip(0)
    keys = ["%s . 0x%08x : %d" % (lan, D.SPI_NATT, ZONE), "%s . 0x%08x : %d" % (lan, D.SPI_ESP, ZONE)]
    raw = {flow: {s: [] for s in STEPS} for flow in ("natt", "esp")}
    try:
        for rep in range(reps):
            for step in STEPS:
                _apply(L.router, None if step == "kernel" else _ruleset(step, "br-lan", keys))
                for flow in ("natt", "esp"):
                    r = D.blast(kernel_run, frames[(flow, "up")], "up", seconds, workdir)
                    raw[flow][step].append(r["pps"])
                    log("  floor %-4s %-8s rep %d: %8d pkt/s" % (flow, step, rep, r["pps"]))
    finally:
        _apply(L.router, None)
    return _summary(raw, STEPS)


GATE_SETS = ("meta l4proto tcp accept", "meta l4proto != { udp, esp } accept",  # the head before 2026-12-07
             "udp dport != %s udp sport != %s accept" % (VPN_UDP, VPN_UDP))
GATE_COMPARES = ("meta l4proto tcp accept", NOT_VPN_UDP + " accept",  # the head of 2026-12-07
                 "meta l4proto != udp meta l4proto != esp accept")
NAT_HOOK = ["\tchain natpre {", "\t\ttype nat hook prerouting priority -110; policy accept;", "\t}"]


def _daemon_table(lan_dev, wan_dev):
    """The fast-path table passthrough loads, as the scratch table."""
    from nat.nftables import render_fastpath
    from passthrough.config import Config
    text = render_fastpath(Config({"lan_device": lan_dev, "wan_device": wan_dev}), "xt")
    body = text.split("\n", 1)[1].rstrip().rsplit("}", 1)[0]
    return _table(body.splitlines())


OTHER_STEPS = ("kernel", "hook", "gate", "gate_compares", "gate_sets", "nat_hook", "table", "ipt_hook", "steer_hook", "tc", "tc_clsact")
_RAW_TABLE_BEFORE = {}  # netns -> whether `ip raw` existed before the ipt_hook step made it


# the steps that are a scratch table: step -> its nft text for (lan_dev, wan_dev)
OTHER_TABLES = {
    "hook": lambda devs: _table(_pre([])),
    "gate": lambda devs: _table(_pre(GATE)),
    "gate_compares": lambda devs: _table(_pre(GATE_COMPARES)),
    "gate_sets": lambda devs: _table(_pre(GATE_SETS)),
    "nat_hook": lambda devs: _table(NAT_HOOK),
    "table": lambda devs: _daemon_table(*devs),
    "steer_hook": lambda devs: _table(STEER_CHAIN),
}


def _other_step(ns, step, devs, on):
    """Set up (on) or tear down one step of the other-traffic series."""
    if step in OTHER_TABLES:
        _apply(ns, OTHER_TABLES[step](devs) if on else None)
    elif step == "ipt_hook":
        from nat.kernel import iptables_queue_spec
        from passthrough.config import Config
        spec = iptables_queue_spec(Config({"queue_num": "7199"}))  # a queue nobody reads: bypassed
        if on:
            _RAW_TABLE_BEFORE[ns] = B.nsexec(ns, "nft", "list", "table", "ip", "raw", check=False).returncode == 0
        B.nsexec(ns, "iptables", "-w", spec[0], spec[1], "-I" if on else "-D", *spec[2:], check=on)
        if not on and not _RAW_TABLE_BEFORE.pop(ns, True):
            # iptables-nft leaves its raw table and hooked PREROUTING chain behind: an empty
            # hook in every later step unless it goes too
            B.nsexec(ns, "nft", "delete", "table", "ip", "raw", check=False)
    elif step in ("tc", "tc_clsact"):
        # tc: the program where the daemon puts it (tcx on 6.6+); tc_clsact: as a clsact filter
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if on:
            code = ("import sys, socket; sys.path.insert(0, %r); from nat.bpf import OffloadProgram; "
                    "p = OffloadProgram(); p.set_candidate_mark(0); p.lib.has_tcx = p.lib.has_tcx and %r; "
                    "[p.attach(socket.if_nametoindex(d), 'offload') for d in %r]"
                    % (root, step == "tc", tuple(devs)))
            B.nsexec(ns, sys.executable, "-c", code)  # both hooks keep the program after exit
        else:
            code = ("import sys, socket; sys.path.insert(0, %r); from nat import bpf; "
                    "[bpf.detach(socket.if_nametoindex(d)) for d in %r]" % (root, tuple(devs)))
            B.nsexec(ns, sys.executable, "-c", code)
            for dev in devs:
                B.nsexec(ns, "tc", "qdisc", "del", "dev", dev, "clsact", check=False)


def measure_other(kernel_run, workdir, seconds=1.0, reps=3, log=print):
    """{"udp-up": {step: {pps, ns_per_pkt, ratio, added_ns}}, ...} for plain UDP and TCP."""
    L = kernel_run.lab
    fr = D.frames(kernel_run, D.learn(kernel_run), 100)
    frames = dict(((f if f == "tcp" else "udp", d), fr[(f, d)]) for f in ("other", "tcp") for d in ("up", "down"))
    raw = {"%s-%s" % k: {s: [] for s in OTHER_STEPS} for k in frames}
    devs = ("br-lan", "wan")
    try:
        for rep in range(reps):
            for step in OTHER_STEPS:
                _other_step(L.router, step, devs, True)
                try:
                    for (flow, direction) in sorted(frames, key=lambda k: (k[0], k[1] != "up")):
                        r = D.blast(kernel_run, frames[(flow, direction)], direction, seconds, workdir)
                        raw["%s-%s" % (flow, direction)][step].append(r["pps"])
                        log("  floor other %-4s %-4s %-10s rep %d: %8d pkt/s" % (flow, direction, step, rep, r["pps"]))
                finally:
                    _other_step(L.router, step, devs, False)
    finally:
        _apply(L.router, None)
    return _summary(raw, OTHER_STEPS)
