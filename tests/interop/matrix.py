"""The interop matrix: two LAN clients of one implementation to one server at the same time, in
the QEMU router's guest (its kernel has ESP, L2TP and PPP), for every router mode.

A cell is run by the guest's `pt-interop cell` (openwrt_pkg/qemu/guest/pt-interop: real
strongSwan, libreswan, xl2tpd and pppd peers in guest namespaces); this side sets the router's
mode with uci (as an admin would) and collects one row per cell:
  client, server, ike, mode, router_mode, ok, reason, seconds, known_limit, clients, server_peers
"""
import itertools
import json
import time

IMPLEMENTATIONS = ("strongswan", "libreswan")
MODES = ((2, "tunnel"), (1, "tunnel"), (1, "l2tp-1701"), (1, "l2tp-random"))
# masquerade: passthrough disabled (enabled 0): fw4's masquerade alone, the kernel picks ports
ROUTER_MODES = ("masquerade", "preserve", "distinct")
DEFAULT_ROUTER_MODE = "auto"  # what a fresh install runs (passthrough.config)

# What the default test command runs (tests/qemu/test_qemu_interop.py): a handful of cells, each
# server implementation, IKEv1 and IKEv2, tunnel and L2TP, in the default router mode.
DEFAULT_CELLS = [
    {"client": "strongswan", "server": "strongswan", "ike": 2, "mode": "tunnel"},
    {"client": "libreswan", "server": "strongswan", "ike": 1, "mode": "l2tp-random"},
    {"client": "strongswan", "server": "libreswan", "ike": 1, "mode": "l2tp-random"},
    {"client": "libreswan", "server": "libreswan", "ike": 2, "mode": "tunnel"},
]

# Limits of the server side that no router can lift, stated where a cell hits them.
KNOWN_LIMITS = {
    "l2tp-1701": "Linux transport mode: two clients behind one NAT address with the same inner ports "
                 "(udp 1701 <-> 1701) need two identical xfrm policies on the server; the second "
                 "replaces or clashes with the first (a server-side limit; random source ports avoid it)",
}


def full_cells():
    return [dict(client=c, server=s, ike=ike, mode=m, router_mode=r)
            for r, s, c, (ike, m) in itertools.product(ROUTER_MODES, IMPLEMENTATIONS, IMPLEMENTATIONS, MODES)]


def default_cells():
    return [dict(c, router_mode=DEFAULT_ROUTER_MODE) for c in DEFAULT_CELLS]


def set_router_mode(lab, mode):
    """uci as an admin would, then wait until the daemon runs it (procd's config trigger)."""
    if mode == "masquerade":
        lab.uci_set(enabled="0")
        lab.sh("reload_config")
        # the fast path goes; the policy table (fail-closed switches, all on here) may stay
        lab.wait_for(lambda: "table ip passthrough" not in lab.sh("nft list tables"), 30, interval=0.3,
                     what="passthrough's rules gone (enabled 0)")
        return
    lab.uci_set(enabled="1", natt_ports=mode)
    lab.sh("reload_config")
    want = mode if mode != "auto" else None

    def running():
        if "table ip passthrough" not in lab.sh("nft list tables"):
            return False
        st = lab.stats().get("natt_ports") or {}
        return st.get("configured") == mode and (want is None or st.get("effective") == want)
    lab.wait_for(running, 40, interval=0.3, what="passthrough running with natt_ports %s" % mode)


def run_cell(lab, cell):
    spec = {k: cell[k] for k in ("client", "server", "ike", "mode")}
    lab.guest.run("conntrack -F")  # each cell starts from an empty conntrack table on the router
    log_from = _log_lines(lab)
    t = time.time()
    res = lab.guest.run("pt-interop cell '%s'" % json.dumps(spec), timeout=420)
    out = None
    for line in res.stdout.splitlines():
        try:
            out = json.loads(line)
        except ValueError:
            pass
    if out is None:
        out = {"ok": False, "reason": "pt-interop printed no result (rc %s): %s" % (res.rc, res.stderr[-500:])}
    row = dict(cell, ok=bool(out.get("ok")), reason=out.get("reason", ""), seconds=round(time.time() - t, 1),
               known_limit=None if out.get("ok") else KNOWN_LIMITS.get(cell["mode"]),
               clients=out.get("clients", {}), server_peers=out.get("server_peers", []))
    if cell["router_mode"] != "masquerade":  # the daemon's NAT-T port decisions during the cell
        row["router_natt"] = [l for l in _log_since(lab, log_from) if "NAT-T" in l]
    if not row["ok"]:
        row["logs"] = out.get("logs", {})
        if cell["router_mode"] != "masquerade":  # what the daemon learned and decided meanwhile
            row["logs"]["router"] = lab.guest.run("logread -e passthrough | grep -v expired | tail -n 60; "
                                                  "passthrough status | head -n 6").stdout.splitlines()
    return row


def _log_lines(lab):
    return lab.guest.run("logread -e passthrough").stdout.splitlines()


def _log_since(lab, before):
    """The daemon's log lines written after `before` (logd's buffer is a ring: found by content)."""
    now = _log_lines(lab)
    if not before:
        return now
    for i in range(len(now) - 1, -1, -1):
        if now[i] == before[-1]:
            return now[i + 1:]
    return now


def run(lab, cells, progress=None, out_path=None):
    """Run the cells grouped by router mode; rows in cell order. Writes out_path after each cell."""
    rows = []
    for mode, group in itertools.groupby(sorted(cells, key=lambda c: (ROUTER_MODES + ("auto",)).index(c["router_mode"])),
                                         key=lambda c: c["router_mode"]):
        set_router_mode(lab, mode)
        for cell in group:
            row = run_cell(lab, cell)
            rows.append(row)
            if progress:
                progress(row)
            if out_path:
                with open(out_path, "w") as f:
                    json.dump(rows, f, indent=1, sort_keys=True)
    return rows


def markdown(rows):
    """The README's table: one line per (server, client, ike, mode), one column per router mode."""
    modes = [m for m in ROUTER_MODES + ("auto",) if any(r["router_mode"] == m for r in rows)]
    by = {}
    for r in rows:
        by.setdefault((r["server"], r["client"], r["ike"], r["mode"]), {})[r["router_mode"]] = r
    lines = ["| server | clients (2) | IKE | mode | " + " | ".join(modes) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in modes) + " |"]
    for key in sorted(by, key=lambda k: (IMPLEMENTATIONS.index(k[0]), IMPLEMENTATIONS.index(k[1]), -k[2], k[3])):
        cells = []
        for m in modes:
            r = by[key].get(m)
            cells.append("" if r is None else "pass" if r["ok"] else ("fail (known limit)" if r.get("known_limit") else
                                                                    "fail: " + short_reason(r)))
        lines.append("| %s | %s | v%d | %s | %s |" % (key[0], key[1], key[2], key[3], " | ".join(cells)))
    return "\n".join(lines)


def short_reason(row):
    return (row.get("reason") or "?").split(";")[0][:60]
