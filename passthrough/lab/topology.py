"""Namespace lab: LAN hosts -- router (runs passthrough) -- WAN server.

    lan1 192.168.1.10 ┐
    lan2 192.168.1.11 ┴─ br-lan 192.168.1.1 [router] wan 203.0.113.1 ── 203.0.113.2 server

The router gets a plain fw4-like masquerade so that, without passthrough, it behaves like a stock
NAT router (the baseline). All names carry a prefix so several labs (tests, demo) can coexist.
"""
import os
import subprocess

LAN_NET = "192.168.1"
WAN_NET = "203.0.113"
ROUTER_LAN_IP = LAN_NET + ".1"
ROUTER_WAN_IP = WAN_NET + ".1"
SERVER_IP = WAN_NET + ".2"

BASE_FIREWALL = """
table ip pt_lab_fw {
    chain forward {
        type filter hook forward priority filter; policy accept;
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
"""


def run(cmd, check=True, input=None, timeout=30):
    """Run a command (list), return CompletedProcess; raise with stderr on failure."""
    p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()))
    return p


def nsexec(ns, *cmd, **kw):
    return run(["ip", "netns", "exec", ns] + [str(c) for c in cmd], **kw)


class Lab:
    """Builds and tears down the namespace topology. `hosts` LAN hosts, one WAN server."""

    def __init__(self, prefix="pt-", hosts=2, servers=1):
        self.prefix = prefix
        self.router = prefix + "router"
        self.server = prefix + "wan"
        self.lan_hosts = [prefix + "lan%d" % (i + 1) for i in range(hosts)]
        self.servers = servers

    # --- addresses -------------------------------------------------------------------
    def lan_ip(self, i):
        """Address of LAN host i (0-based)."""
        return "%s.%d" % (LAN_NET, 10 + i)

    def server_ip(self, i=0):
        return "%s.%d" % (WAN_NET, 2 + i)

    lan_device = "br-lan"
    wan_device = "wan"

    @property
    def namespaces(self):
        return [self.router, self.server] + self.lan_hosts

    def exists(self):
        out = run(["ip", "netns", "list"]).stdout
        have = set(line.split()[0] for line in out.splitlines() if line.strip())
        return self.router in have

    # --- build ---------------------------------------------------------------------
    def up(self):
        self.down()
        try:
            self._build()
        except Exception:
            self.down()
            raise
        return self

    def _build(self):
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            nsexec(ns, "ip", "link", "set", "lo", "up")
        r = self.router
        nsexec(r, "ip", "link", "add", "br-lan", "type", "bridge")
        nsexec(r, "ip", "addr", "add", ROUTER_LAN_IP + "/24", "dev", "br-lan")
        nsexec(r, "ip", "link", "set", "br-lan", "up")
        for i, host in enumerate(self.lan_hosts):
            port = "lan%d" % (i + 1)
            run(["ip", "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port, "netns", r])
            nsexec(r, "ip", "link", "set", port, "master", "br-lan")
            nsexec(r, "ip", "link", "set", port, "up")
            self._offload_off(r, port)
            nsexec(host, "ip", "addr", "add", self.lan_ip(i) + "/24", "dev", "eth0")
            nsexec(host, "ip", "link", "set", "eth0", "up")
            nsexec(host, "ip", "route", "add", "default", "via", ROUTER_LAN_IP)
            self._offload_off(host, "eth0")
        run(["ip", "link", "add", "wan", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", self.server])
        nsexec(r, "ip", "addr", "add", ROUTER_WAN_IP + "/24", "dev", "wan")
        nsexec(r, "ip", "link", "set", "wan", "up")
        self._offload_off(r, "wan")
        for i in range(self.servers):
            nsexec(self.server, "ip", "addr", "add", self.server_ip(i) + "/24", "dev", "eth0")
        nsexec(self.server, "ip", "link", "set", "eth0", "up")
        self._offload_off(self.server, "eth0")
        nsexec(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # Bridged LAN frames must not traverse iptables/nft a second time (br_netfilter).
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"):
            path = "net.bridge." + key
            nsexec(r, "sysctl", "-qw", path + "=0", check=False)
        nsexec(r, "nft", "-f", "-", input=BASE_FIREWALL)

    @staticmethod
    def _offload_off(ns, dev):
        # veth checksum offload leaves partial checksums that NFQUEUE consumers and peers reject.
        nsexec(ns, "ethtool", "-K", dev, "tx", "off", check=False)

    def down(self):
        out = run(["ip", "netns", "list"]).stdout
        have = set(line.split()[0] for line in out.splitlines() if line.strip())
        for ns in self.namespaces:
            if ns in have:
                _kill_ns_processes(ns)
                run(["ip", "netns", "del", ns], check=False)


def _kill_ns_processes(ns):
    """End processes still running inside a lab namespace (only ours live there)."""
    p = run(["ip", "netns", "pids", ns], check=False)
    for pid in p.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (OSError, ValueError):
            pass
