"""Helpers for tests/lab/test_real_peers.py: the namespace lab (router running passthrough)
with real strongSwan / xl2tpd peers instead of the scripted responder.

`RealLab` owns everything a test makes: the LabRun (namespaces + daemon), every peer and every
capture, each ended by PID in `close()`, which then checks that nothing is left behind (no
process in our namespaces, no namespace with our prefix, none of the PIDs we started alive).
"""
import json
import os
import re
import subprocess
import sys

from nat import offload
from passthrough.lab import peers as P
from passthrough.lab.harness import LabRun
from passthrough.lab.topology import ROUTER_WAN_IP

_CT_KEYS = ("src", "dst", "sport", "dport")
_CT_PROTO = {17: "udp", 6: "tcp"}


def parse_conntrack(text):
    """`conntrack -L` lines (UDP and TCP) -> dicts: proto name, timeout (s), orig/reply
    {src,dst,sport,dport}, zone (int or None), flags (set), line. A view of nat.offload's
    parser, the daemon's own."""
    out = []
    for e in offload.parse_conntrack(text):
        if e["proto"] not in _CT_PROTO:
            continue
        out.append({"proto": _CT_PROTO[e["proto"]], "timeout": e["timeout"], "orig": dict(zip(_CT_KEYS, e["orig"])),
                    "reply": dict(zip(_CT_KEYS, e["reply"])), "zone": e["zone"] or None, "flags": e["flags"],
                    "line": e["line"]})
    return out


def disable_ipv6(ns):
    """No IPv6 in a lab namespace: link-local DAD finishing after charon started makes it roam
    (MOBIKE address updates at random moments), see passthrough/lab/peers.py."""
    for key in ("all", "default"):
        P.run(["sysctl", "-q", "-w", "net.ipv6.conf.%s.disable_ipv6=1" % key], ns=ns)


def parse_pcap(path):
    """Decode a pcap with `passthrough parse --json` (our own parsers); list of dicts."""
    p = subprocess.run([sys.executable, "-m", "passthrough.cli", "parse", "--pcap", path, "--json"],
                       capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class RealLab:
    """The lab for one test: LabRun(responders=False) + real peers, all ended in close()."""

    def __init__(self, base_dir, start_daemon=True, **options):
        self.prefix = "pt-rp%d-" % (os.getpid() % 100000)
        self.base_dir = str(base_dir)
        self.run = LabRun(prefix=self.prefix, workdir=os.path.join(self.base_dir, "lab"))
        self.lab = self.run.lab
        self.peers = []
        self.captures = []
        self.pids = set()
        self.run.up(start_daemon=start_daemon, responders=False, **options)
        try:
            for ns in self.lab.namespaces:
                disable_ipv6(ns)
        except Exception:
            self.run.down()
            raise
        self.server_ip = self.lab.server_ip(0)

    # --- things we start ---------------------------------------------------------------------
    def dir(self, name):
        return os.path.join(self.base_dir, name)

    def start(self, peer):
        """Start a peer (Charon / Xl2tpd); it is stopped in close() even if start() fails."""
        self.peers.append(peer)
        peer.start()
        self._remember(peer.pid)
        return peer

    def stop(self, peer):
        self._remember(peer.pid)
        peer.stop()

    def capture(self, ns, iface, name, bpf="udp"):
        cap = P.Capture(ns, iface, self.dir(name), bpf)
        self.captures.append(cap)
        cap.start()
        self._remember(cap.proc.pid)
        return cap

    def _remember(self, pid):
        if pid:
            self.pids.add(pid)
            self.pids.update(P._descendants(pid))

    # --- router observables ------------------------------------------------------------------
    def conntrack(self):
        return parse_conntrack(self.run.conntrack())

    def vpn_entries(self, port=None, lan_ip=None):
        """conntrack entries between a LAN host and our server, each with a "view" added:
        {lan, lan_port, wan_ip, wan_port, remote_port, inbound_first}. Most entries start
        with the LAN host's packet (orig = LAN -> server); one that started with a packet from
        the server (fallback steering + DNAT in the host's zone) has the tuples the other way
        round (orig = server -> router, reply = LAN host -> server). `port`: the LAN-side port."""
        lans = [self.lab.lan_ip(i) for i in range(len(self.lab.lan_hosts))]
        out = []
        for e in self.conntrack():
            o, r = e["orig"], e["reply"]
            if o.get("src") in lans and o.get("dst") == self.server_ip:
                v = {"lan": o["src"], "lan_port": o.get("sport"), "wan_ip": r.get("dst"),
                     "wan_port": r.get("dport"), "remote_port": o.get("dport"), "inbound_first": False}
            elif o.get("src") == self.server_ip and r.get("src") in lans and r.get("dst") == self.server_ip:
                v = {"lan": r["src"], "lan_port": r.get("sport"), "wan_ip": o.get("dst"),
                     "wan_port": o.get("dport"), "remote_port": o.get("sport"), "inbound_first": True}
            else:
                continue
            if (port is not None and v["lan_port"] != port) or (lan_ip is not None and v["lan"] != lan_ip):
                continue
            e["view"] = v
            out.append(e)
        return out

    def router_sysctl(self, key):
        return P.run(["sysctl", "-n", key], ns=self.lab.router).stdout.strip()

    def policy_drops(self, family):
        """Packets dropped so far by the policy rules of `family` (nft counters)."""
        text = self.run.nft("list", "table", "inet", "passthrough_policy", check=False)
        total = 0
        for m in re.finditer(r"counter packets (\d+) bytes \d+ drop comment \"%s_passthrough off\"" % family, text):
            total += int(m.group(1))
        return total

    def flows(self, kind=None):
        return [f for f in self.run.status()["flows"] if kind is None or f["kind"] == kind]

    def zone_of(self, lan_ip):
        return self.run.status()["summary"]["hosts"].get(lan_ip)

    @property
    def router_wan_ip(self):
        return ROUTER_WAN_IP

    # --- teardown ------------------------------------------------------------------------------
    def diagnostics(self):
        """Logs and router state, printed at teardown (pytest shows it for failed tests)."""
        parts = ["=== daemon log ===", self.run.log_tail(60)]
        try:
            parts += ["=== conntrack (router) ===", self.run.conntrack()]
        except Exception as e:  # noqa: BLE001 - diagnostics must not mask the real failure
            parts.append("conntrack: %s" % e)
        for p in self.peers:
            try:
                parts += ["=== %s (%s) ===" % (p.name, p.ns), "\n".join(p.log_text().splitlines()[-40:])]
            except Exception as e:  # noqa: BLE001
                parts.append("%s: %s" % (p.name, e))
        return "\n".join(parts)

    def close(self, diagnostics=True):
        """End everything, then check nothing is left; returns a list of problems ([] = clean).
        diagnostics: first print logs and router state (for a failed test)."""
        for p in self.peers:
            if p.pid:
                self._remember(p.pid)
        for c in self.captures:
            if c.proc is not None:
                self._remember(c.proc.pid)
        if self.run.daemon is not None:
            self._remember(self.run.daemon.pid)
        if diagnostics:
            print(self.diagnostics())
        problems = []
        for c in reversed(self.captures):
            try:
                c.stop(settle=0)
            except Exception as e:  # noqa: BLE001
                problems.append("capture %s: %s" % (c.path, e))
        for p in reversed(self.peers):
            try:
                p.stop()
            except Exception as e:  # noqa: BLE001
                problems.append("stopping %s: %s" % (p.name, e))
        try:
            self.run.stop_daemon()
        except Exception as e:  # noqa: BLE001
            problems.append("stopping the daemon: %s" % e)
        for ns in self.lab.namespaces:
            left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            if left:
                problems.append("processes left in %s: %s" % (ns, " ".join(left)))
        self.run.down()  # kills whatever is still in our namespaces, by PID, and deletes them
        have = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for ns in self.lab.namespaces:
            if re.search(r"^%s(\s|$)" % re.escape(ns), have, re.M):
                problems.append("namespace %s left behind" % ns)
        alive = sorted(pid for pid in self.pids if _alive(pid))
        if alive:
            problems.append("our processes still alive: %s" % alive)
        return problems
