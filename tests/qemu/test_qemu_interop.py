"""Real VPN peers through the QEMU router in its default mode (natt_ports auto): a handful of
interop matrix cells (tests/interop: two LAN clients to one server at the same time, strongSwan
and libreswan on both sides), and PPTP with two pptp-linux clients to one pptpd, switched off
and on. The full matrix: `python -m tests.interop` (README)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.interop import matrix  # noqa: E402

pytestmark = pytest.mark.qemu

NATT_RANGE = range(14500, 15524)


@pytest.fixture(scope="module")
def ilab(qlab):
    matrix.set_router_mode(qlab, matrix.DEFAULT_ROUTER_MODE)
    yield qlab
    qlab.guest.run("pt-interop down", timeout=60)


@pytest.mark.parametrize("cell", matrix.default_cells(), ids=lambda c: "%s-to-%s-v%d-%s" % (
    c["client"], c["server"], c["ike"], c["mode"]))
def test_two_clients_one_server(ilab, cell):
    row = matrix.run_cell(ilab, cell)
    ilab.results.setdefault("interop_default_cells", []).append(
        {k: row[k] for k in ("client", "server", "ike", "mode", "ok", "seconds")})
    assert row["ok"], "%s\n%s" % (row["reason"], json.dumps(row.get("logs"), indent=1))
    for ns, c in row["clients"].items():
        assert c["sa"] and c["ping_out"] and c["ping_in"], (ns, c)
        # the router's conntrack: each client in its own zone, 500 kept
        ike = [r for r in c["router"] if r["proto"] == "udp" and r["dport"] == "500"]
        assert ike and all(r["ext_port"] == "500" and r["zone"] != "0" for r in ike), c["router"]
    # natt_ports auto = distinct: one client keeps 4500 at the server, the other comes from the range
    natt = sorted(int(r["ext_port"]) for c in row["clients"].values() for r in c["router"] if r["dport"] == "4500")
    assert len(natt) == 2 and natt[0] == 4500 and natt[1] in NATT_RANGE, row["clients"]
    if cell["server"] == "strongswan":  # the server's own view of its two IKE SAs
        assert sorted(int(p.split(":")[1]) for p in row["server_peers"]) == natt, (
            row["server_peers"], row["clients"], row.get("router_natt"))


def _ppp(lab, ns):
    out = lab.guest.run("pt-interop ppp %s" % ns).stdout.strip()
    return json.loads(out) if out else None


def _probes(lab, seconds, names):
    """Start a UDP echo probe through each client's ppp0 (guest background jobs); a reader."""
    logs = {}
    for ns in names:
        logs[ns] = "/tmp/interop/%s/probe.json" % ns
        lab.guest.run("rm -f %s %s.ready" % (logs[ns], logs[ns]))
        lab.guest.bg("ip netns exec %s pt-interop probe 10.99.0.1 %s %s.ready > %s" % (ns, seconds, logs[ns], logs[ns]))
    # each probe has had its first answer (writes NAME.ready)
    lab.wait_for(lambda: all(lab.guest.run("test -s %s.ready" % p).rc == 0 for p in logs.values()), 20, interval=0.2,
                 what="the probes' first answers")

    def read():
        out = {}
        for ns, path in logs.items():
            text = lab.guest.run("cat %s 2>/dev/null" % path).stdout.strip()
            if not text:
                return None
            out[ns] = json.loads(text)
        return out
    return read


def _drops(lab):
    """Packets the policy's `tcp dport 1723 ... drop` rule has dropped so far."""
    import re

    out = lab.sh("nft list table inet passthrough_policy")
    m = re.search(r"tcp dport 1723 counter packets (\d+)", out)
    return int(m.group(1)) if m else None


def test_pptp_two_real_clients_cut_and_restored(ilab):
    """Two pptp-linux clients (pppd + pptp) behind the router to one pptpd: both calls up through
    the kernel's pptp helper (GRE call ids translated), traffic through both; pptp_passthrough 0
    stops both within 1 s of the policy and blocks a new call; 1 again: a new call works."""
    lab, g = ilab, ilab.guest
    try:
        lab.sh("pt-interop pptp-server", timeout=60)
        for i in (1, 2):
            lab.sh("pt-interop pptp-client %d" % i)
        lab.wait_for(lambda: _ppp(lab, "pc1") and _ppp(lab, "pc2"), 60, interval=0.5, what="both PPTP calls up")
        gre = [l for l in lab.sh("conntrack -L -p gre 2>/dev/null || true").splitlines() if "203.0.113.20" in l]
        assert len(gre) == 2 and all("ASSURED" in l for l in gre), gre
        tcp = lab.sh("conntrack -L -p tcp --dport 1723 2>/dev/null || true")
        assert tcp.count("helper=pptp") == 2, tcp

        read = _probes(lab, 15, ("pc1", "pc2"))  # longer than commit -> policy under TCG (4.5-7 s seen)
        t_commit = float(lab.sh("cat /proc/uptime").split()[0])
        lab.sh("uci set passthrough.global.pptp_passthrough=0 && uci commit passthrough && reload_config")
        # the moment the policy holds, timed in the guest (no agent round trip in between)
        t_policy = float(lab.sh("while ! nft list table inet passthrough_policy 2>/dev/null | grep -q 'pptp_passthrough "
                                "off'; do :; done; cat /proc/uptime", timeout=30).split()[0])
        probes = lab.wait_for(read, 30, interval=0.5, what="the probes' results")
        lab.results["pptp_cut"] = {ns: dict(p, cut_after_policy_s=round(p["last_reply"] - t_policy, 2) if p["last_reply"]
                                            else None) for ns, p in probes.items()}
        lab.results["pptp_cut"]["policy_after_commit_s"] = round(t_policy - t_commit, 2)
        for ns, p in probes.items():
            assert p["replies"] > 0 and p["first_reply"] < t_commit, (ns, p, t_commit)
            assert p["last_reply"] - t_policy <= 1.0, (ns, p, t_policy)
            assert p["sent"] - p["replies"] > 10, (ns, p)  # and it stayed cut
        # a new call is blocked: its TCP 1723 SYNs hit the policy's drop, no ppp address
        before = _drops(lab)
        lab.sh("pt-interop pptp-client 3")
        lab.wait_for(lambda: _drops(lab) > before, 20, interval=0.3, what="the new call's SYNs dropped")
        assert not _ppp(lab, "pc3")

        lab.sh("pt-interop pptp-stop 3")
        lab.sh("uci set passthrough.global.pptp_passthrough=1 && uci commit passthrough && reload_config")
        lab.wait_for(lambda: "pptp_passthrough off" not in lab.sh("nft list table inet passthrough_policy 2>/dev/null || true"),
                     30, interval=0.3, what="pptp policy lifted")
        lab.sh("pt-interop pptp-client 3")
        lab.wait_for(lambda: _ppp(lab, "pc3"), 60, interval=0.5, what="a new PPTP call after switching back on")
        read = _probes(lab, 2, ("pc3",))
        p = lab.wait_for(read, 20, interval=0.5, what="pc3's probe")["pc3"]
        assert p["replies"] > 0, p
    finally:
        g.run("pt-interop down", timeout=60)
        g.run("uci set passthrough.global.pptp_passthrough=1 && uci commit passthrough && reload_config")
