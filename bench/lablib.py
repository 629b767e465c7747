"""Shared helpers for the benchmarks: packet bytes, trafgen configs, nft sink counters.

Everything runs inside namespaces of one LabRun (prefix of our own, e.g. "pt-b-"); traffic is
bounded in time (every generator is started with a deadline and ended by PID).
"""
import json
import os
import signal
import socket
import struct
import subprocess
import time

from passthrough.lab.topology import ROUTER_WAN_IP

SINK_TABLE = "pt_bench_sink"


# --- packet bytes ------------------------------------------------------------------------------
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, ident=1, ttl=64):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, ttl, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def udp(src, dst, sport, dport, payload):
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    hdr = struct.pack("!HHHH", sport, dport, length, 0)
    c = csum(pseudo + hdr + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, c) + payload


def tcp(src, dst, sport, dport, payload, flags=0x10, seq=1000, ack=2000):
    """A TCP segment (default: a bare ACK, which conntrack picks up mid-stream)."""
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20 + len(payload))
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    c = csum(pseudo + hdr + payload)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:] + payload


def ether(dst_mac, src_mac, payload, ethertype=0x0800):
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + \
        struct.pack("!H", ethertype) + payload


def pad_to(payload, ip_size, overhead):
    """Pad an L4 payload so the whole IP packet is ip_size bytes (overhead = IP + L4 headers)."""
    want = ip_size - overhead - len(payload)
    return payload + bytes((i * 7) & 0xFF for i in range(max(0, want)))


def esp_payload(spi, seq, ip_size, in_udp):
    body = struct.pack("!II", spi, seq)
    return pad_to(body, ip_size, 28 if in_udp else 20)


def l2tp_data(tunnel, session, ip_size):
    return pad_to(struct.pack("!HHH", 0x0002, tunnel, session), ip_size, 28)


def ike_header(spi_i, msgid=0, exch=34, flags=0x08, spi_r=0):
    return struct.pack("!QQBBBBII", spi_i, spi_r, 0, 0x20, exch, flags, msgid, 28)


def l2tp_control_hello(tunnel, ns=0, nr=0):
    avp = struct.pack("!HHHH", 0x8000 | 8, 0, 0, 6)  # Message Type AVP: HELLO
    return struct.pack("!HHHHHH", 0xC802, 12 + len(avp), tunnel, 0, ns, nr) + avp


# --- namespace facts ---------------------------------------------------------------------------
def mac_of(ns, dev):
    out = nsexec(ns, "ip", "-j", "link", "show", "dev", dev).stdout
    return json.loads(out)[0]["address"]


def trafgen_conf(frames):
    """A trafgen packet config: one block per frame (static bytes)."""
    blocks = []
    for f in frames:
        blocks.append("{ " + ", ".join("0x%02x" % b for b in f) + " }")
    return "\n".join(blocks) + "\n"


LINEAR_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "linear.c")


def linear_headers(namespaces, workdir, dev="eth0", on=True):
    """The senders' frames reach the router with their headers linear (bench/bpf/linear.c on
    the senders' egress; trafgen must then take the qdisc path, Trafgen(qdisc=True)), as a
    router's Ethernet driver delivers them. The pull costs the sender, equally in every lab."""
    obj = os.path.join(workdir, "linear.o")
    if on and not os.path.exists(obj):
        arch = "/usr/include/%s-linux-gnu" % os.uname().machine
        subprocess.run(["clang", "-O2", "-target", "bpf", "-I" + arch, "-c", LINEAR_SRC, "-o", obj], check=True)
    for ns in namespaces:
        nsexec(ns, "tc", "qdisc", "del", "dev", dev, "clsact", check=False)
        if on:
            nsexec(ns, "tc", "qdisc", "add", "dev", dev, "clsact")
            nsexec(ns, "tc", "filter", "add", "dev", dev, "egress", "bpf", "da", "obj", obj, "sec", "tc")


class Trafgen:
    """trafgen (netsniff-ng) in a namespace, ended by PID. qdisc: through the device's qdisc
    and tc egress (trafgen bypasses both by default)."""

    def __init__(self, ns, dev, conf_path, cpus=1, gap=None, count=0, qdisc=False):
        self.argv = ["ip", "netns", "exec", ns, "trafgen", "-o", dev, "-i", conf_path, "-P", str(cpus)]
        if qdisc:
            self.argv.append("-q")
        if gap:
            self.argv += ["-t", gap]
        if count:
            self.argv += ["-n", str(count)]
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        return self

    def stop(self):
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        self.proc = None
        return err


# --- sink counters -----------------------------------------------------------------------------
def sink_install(ns, match):
    """Count and drop matching packets at the very start of the namespace's prerouting, so
    nothing answers them (no responder replies, no ICMP)."""
    text = ("table ip %s {}\ndelete table ip %s\ntable ip %s {\n"
            "\tcounter rx {}\n"
            "\tchain pre { type filter hook prerouting priority -400; policy accept; %s counter name rx drop; }\n}\n"
            % (SINK_TABLE, SINK_TABLE, SINK_TABLE, match))
    nsexec(ns, "nft", "-f", "-", input=text)


def sink_read(ns):
    out = nsexec(ns, "nft", "-j", "list", "counter", "ip", SINK_TABLE, "rx").stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return item["counter"]["packets"], item["counter"]["bytes"]
    return 0, 0


def sink_remove(ns):
    nsexec(ns, "nft", "delete", "table", "ip", SINK_TABLE, check=False)


def link_stats(ns, dev):
    out = json.loads(nsexec(ns, "ip", "-j", "-s", "link", "show", "dev", dev).stdout)[0]["stats64"]
    return out


def cpu_times():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    return sum(vals), vals[3] + vals[4]


def wan_ip():
    return ROUTER_WAN_IP


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values):
    return percentile(values, 50)


def now():
    return time.monotonic()


def nsexec(ns, *cmd, **kw):
    from passthrough.lab.topology import nsexec as _nsexec
    return _nsexec(ns, *cmd, **kw)


def wait_file(path, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited (%s) before %s appeared" % (proc.returncode, path))
        if time.monotonic() > deadline:
            raise TimeoutError("waiting for %s" % path)
        time.sleep(0.05)
