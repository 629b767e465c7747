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
"""
from bench import lablib as B
from bench import dataplane as D

TABLE = "pt_floor"
ZONE = 4242


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
    out = ["table ip %s {}" % TABLE, "delete table ip %s" % TABLE, "table ip %s {" % TABLE]
    out.append("\tmap m { typeof ip saddr . @th,0,32 : ct zone; elements = { %s } }" % ", ".join(key_elems))
    out.append("\tchain c {")
    out.extend("\t\t" + r for r in inner)
    out.append("\t}")
    out.append("\tchain pre {")
    out.append("\t\ttype filter hook prerouting priority -310; policy accept;")
    if step != "hook":
        out.append('\t\tiifname "%s" jump c' % lan_dev)
    out.append("\t}")
    if step == "steer":
        out.append("\tchain steer {")
        out.append("\t\ttype filter hook prerouting priority -250; policy accept;")
        out.append("\t\tmeta mark & 0x20000000 == 0 accept")
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


STEPS = ("kernel", "hook", "dispatch", "zone", "lookup", "steer")


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
                if step == "kernel":
                    B.nsexec(L.router, "nft", "delete", "table", "ip", TABLE, check=False)
                else:
                    B.nsexec(L.router, "nft", "-f", "-", input=_ruleset(step, "br-lan", keys))
                for flow in ("natt", "esp"):
                    r = D.blast(kernel_run, frames[(flow, "up")], "up", seconds, workdir)
                    raw[flow][step].append(r["pps"])
                    log("  floor %-4s %-8s rep %d: %8d pkt/s" % (flow, step, rep, r["pps"]))
    finally:
        B.nsexec(L.router, "nft", "delete", "table", "ip", TABLE, check=False)
    out = {}
    for flow, steps in raw.items():
        base = B.median(steps["kernel"])
        out[flow] = {}
        for step in STEPS:
            pps = B.median(steps[step])
            out[flow][step] = {"pps": round(pps), "ns_per_pkt": round(1e9 / pps), "ratio": round(pps / base, 3),
                               "added_ns": round(1e9 / pps - 1e9 / base), "all": steps[step]}
    return out
