"""classify's head (nat/nftables.py GATE) in a real kernel: every packet that may be VPN goes on
to the per-device rules, everything else leaves the hook. nft rewrites what it is given (it
merged two port compares into one wrong 32-bit compare once), so the rules are checked by the
packets they let through, not by their text."""
import os
import socket
import subprocess

import pytest

from nat.nftables import GATE

pytestmark = pytest.mark.lab

NS = "pt-gate%d" % (os.getpid() % 100000)

# (sport, dport): a VPN port on either side must reach the rules behind the head
VPN = [(40000, 500), (500, 40000), (40000, 4500), (4500, 40000), (40000, 1701), (1701, 40000),
       (500, 500), (4500, 4500), (1701, 1701), (1701, 500), (500, 1701), (4500, 1701)]
OTHER = [(40000, 53), (53, 40000), (40000, 443), (443, 40000), (40000, 1900), (1900, 40000),
         (499, 4501), (4501, 499), (501, 4499), (1700, 1702), (4501, 40000)]


def sh(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def gate_ns():
    """A namespace whose prerouting hook is the gate, then one counter per (sport, dport)
    case, on lo (a packet to 127.0.0.1 crosses prerouting when lo receives it)."""
    assert sh("ip", "netns", "add", NS).returncode == 0
    try:
        assert sh("ip", "-n", NS, "link", "set", "lo", "up").returncode == 0
        rules = list(GATE)
        for sport, dport in VPN + OTHER:
            rules.append("udp sport %d udp dport %d counter name c%d_%d accept" % (sport, dport, sport, dport))
        rules.append("meta l4proto tcp counter name c_tcp accept")
        rules.append("meta l4proto esp counter name c_esp accept")
        counters = ["\tcounter c%d_%d {}" % c for c in VPN + OTHER] + ["\tcounter c_tcp {}", "\tcounter c_esp {}"]
        text = "table ip gate {\n%s\n\tchain pre {\n\t\ttype filter hook prerouting priority -310;\n%s\n\t}\n}\n" % (
            "\n".join(counters), "\n".join("\t\t" + r for r in rules))
        p = sh("ip", "netns", "exec", NS, "nft", "-f", "-", input=text)
        assert p.returncode == 0, p.stderr
        yield NS
    finally:
        sh("ip", "netns", "del", NS)
    assert NS not in sh("ip", "netns", "list").stdout


def packets_behind_gate(ns, sport, dport, proto="udp"):
    """Send one packet (sport -> dport on lo) in ns; how many reached the rules behind the gate."""
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.bind(('127.0.0.1', %d)); s.sendto(b'x' * 40, ('127.0.0.1', %d))" % (sport, dport))
    if proto == "esp":  # a raw ESP packet (SPI 0x1000, seq 1)
        code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50); "
                "s.sendto(b'\\0\\0\\x10\\0\\0\\0\\0\\1' + b'x' * 32, ('127.0.0.1', 0))")
    if proto == "tcp":
        code = ("import socket; s = socket.socket(); s.settimeout(1)\n"
                "try: s.connect(('127.0.0.1', %d))\nexcept OSError: pass" % dport)
    p = sh("ip", "netns", "exec", ns, "python3", "-c", code)
    assert p.returncode == 0, p.stderr
    name = "c_" + proto if proto in ("tcp", "esp") else "c%d_%d" % (sport, dport)
    out = sh("ip", "netns", "exec", ns, "nft", "list", "counter", "ip", "gate", name).stdout
    return int(out.split("packets")[1].split()[0])


@pytest.mark.parametrize("sport,dport", VPN)
def test_vpn_ports_pass_the_gate(gate_ns, sport, dport):
    assert packets_behind_gate(gate_ns, sport, dport) == 1


@pytest.mark.parametrize("sport,dport", OTHER)
def test_other_udp_leaves_at_the_gate(gate_ns, sport, dport):
    assert packets_behind_gate(gate_ns, sport, dport) == 0


def test_tcp_leaves_at_the_gate(gate_ns):
    assert packets_behind_gate(gate_ns, 0, 500, proto="tcp") == 0


def test_esp_passes_the_gate(gate_ns):
    assert packets_behind_gate(gate_ns, 0, 0, proto="esp") == 1
