"""BPF offload plan: which learned VPN flows the tc program (nat/bpf/offload.c) carries, and the
map entries that say how. Pure and MicroPython-compatible; nat/bpf.py is the I/O shell.

A flow is offloaded only once conntrack holds a replied entry for it in the host's zone: the
firewall has accepted it and NAT has chosen its translation, which the entries copy (the
program never decides anything conntrack has not). Per flow (one SA, one tunnel) two entries:
- outbound, keyed by (LAN port, LAN host, remote, ports, protocol, outbound SPI / the LNS's
  tunnel id): rewrite the source to the translated WAN address and port;
- inbound, keyed by (WAN port, remote, WAN address, ports, protocol, inbound SPI / the host's
  tunnel id): rewrite the destination back to the host.
Inbound, the id tells apart two hosts that share a server with the same ports (each in its own
zone). Outbound, it keeps a new SA (rekey) off the fast path until the daemon has seen its
first packet: the daemon pairs the answering inbound SPI with it, which it could not do if the
program carried every SA of a (host, server) pair.
Carried packets skip conntrack, so the daemon refreshes the entries of active flows (nat/bpf.py)
and drops the entries when the conntrack entry goes (policy flush, conntrack -F, expiry).
"""
import struct
import sys

from passthrough.compat import ip4_bytes

IPPROTO_UDP = 17
IPPROTO_ESP = 50
# offload_val.family bits (offload.c FAMILY_*) and the policy map value
FAMILY_BITS = {"ipsec": 1, "l2tp": 2}
KIND_FAMILY = {"natt": "ipsec", "esp": "ipsec", "l2tp": "l2tp"}
STATS = ("carried", "miss", "policy", "fib", "other_port")  # offload.c ST_* order

# struct offload_key / offload_val of offload.c: ifindex and counters in host order, the rest
# as on the wire.
_HOST = "<" if sys.byteorder == "little" else ">"
KEY_SIZE = 24
VAL_SIZE = 32


def pack_key(ifindex, saddr, daddr, ident, sport, dport, proto):
    """ident: the 4 id bytes as on the wire (b'\\0' * 4 outbound)."""
    return (struct.pack(_HOST + "I", ifindex) + ip4_bytes(saddr) + ip4_bytes(daddr) + ident
            + struct.pack(">HHB", sport or 0, dport or 0, proto) + b"\0\0\0")


def pack_val(addr, port, inbound, family, oif, oif_l3=False):
    """oif_l3: the port has no MAC header (a PPP WAN): the program writes none for it."""
    return (ip4_bytes(addr) + struct.pack(">H", port or 0) + struct.pack("BB", 1 if inbound else 0, FAMILY_BITS[family])
            + struct.pack(_HOST + "IB3xQQ", oif, 1 if oif_l3 else 0, 0, 0))


def val_counters(raw):
    """(packets, bytes) carried by an entry."""
    return struct.unpack(_HOST + "QQ", raw[16:32])


def val_config(raw):
    """An entry's value without its counters (what the daemon compares)."""
    return bytes(raw[:16])


def flow_ident(flow, key):
    """Demux id bytes as the program reads them: ESP SPI, or L2TP tunnel id (first two bytes)."""
    if flow.kind == "l2tp":
        return struct.pack(">H", key) + b"\0\0"
    return struct.pack(">I", key)


def flow_pair(flow):
    """(zone, protocol, lan_ip, lan_port, remote_ip, remote_port) of a flow the program can
    carry, else None: IKE is control traffic, pending SAs have no inbound SPI yet, a tunnel
    has no outbound id before the LNS assigned one (SCCRP)."""
    if flow.kind not in KIND_FAMILY or flow.key is None or flow.key_out is None or flow.zone is None:
        return None
    if flow.kind == "esp":
        return (flow.zone, IPPROTO_ESP, flow.lan_ip, 0, flow.remote_ip, 0)
    if flow.lan_port is None or flow.remote_port is None:
        return None
    return (flow.zone, IPPROTO_UDP, flow.lan_ip, flow.lan_port, flow.remote_ip, flow.remote_port)


# --- conntrack entries -----------------------------------------------------------------------------
PROTO_NUMBERS = {"udp": IPPROTO_UDP, "tcp": 6, "icmp": 1, "esp": IPPROTO_ESP, "gre": 47}


def parse_conntrack(text):
    """Entries of `conntrack -L` text: dicts with zone (0 without), proto (number), timeout (s),
    orig and reply tuples ((src, dst, sport, dport), ports 0 without ports), flags (the
    bracketed words: UNREPLIED, ASSURED, ...), replied (False while UNREPLIED) and the line.
    Lines that do not parse are skipped."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) < 4:
            continue
        try:
            proto = int(words[1])
            timeout = int(words[2])
        except ValueError:
            continue
        tuples = []
        cur = None
        zone = 0
        flags = set()
        for w in words[3:]:
            if w.startswith("[") and w.endswith("]"):
                flags.add(w[1:-1])
                continue
            if "=" not in w:
                continue
            name, _, value = w.partition("=")
            if name == "src":
                cur = {"src": value, "dst": None, "sport": 0, "dport": 0}
                tuples.append(cur)
            elif cur is not None and name == "dst" and cur["dst"] is None:
                cur["dst"] = value
            elif cur is not None and name in ("sport", "dport") and value.isdigit():
                cur[name] = int(value)
            elif name == "zone" and value.isdigit():
                zone = int(value)
        if len(tuples) < 2 or tuples[0]["dst"] is None or tuples[1]["dst"] is None:
            continue

        def tup(t):
            return (t["src"], t["dst"], t["sport"], t["dport"])

        out.append({"zone": zone, "proto": proto, "timeout": timeout, "orig": tup(tuples[0]),
                    "reply": tup(tuples[1]), "flags": flags, "replied": "UNREPLIED" not in flags,
                    "line": line})
    return out


def lookups(pair):
    """The (protocol, tuple, reply direction?) lookups that find a pair's conntrack entry: the
    host's (LAN -> remote is its original direction) or the remote's (a WAN-opened entry, e.g.
    an LNS answering from another port DNATed into the zone: LAN -> remote is its reply)."""
    zone, proto, lan, lan_port, remote, remote_port = pair
    tup = (lan, remote, lan_port, remote_port)
    return [(proto, tup, False), (proto, tup, True)]


def find_translation(pair, entries):
    """(wan_ip, wan_port, ct) for a pair from its zone's conntrack entries, or None while
    conntrack has no replied entry for it. ct (proto, orig tuple) names the entry for refreshes.
    The entry may be the host's (orig from the LAN) or the remote's (an LNS answering from
    another port, DNATed into the zone: orig from the WAN)."""
    zone, proto, lan, lan_port, remote, remote_port = pair
    for e in entries:
        if e["zone"] != zone or e["proto"] != proto or not e["replied"]:
            continue
        o, r = e["orig"], e["reply"]
        if (o[0], o[1], o[2], o[3]) == (lan, remote, lan_port, remote_port) and r[0] == remote:
            return r[1], r[3], (proto, o)  # reply goes to the WAN address and port NAT chose
        if (r[0], r[1], r[2], r[3]) == (lan, remote, lan_port, remote_port) and o[0] == remote:
            return o[1], o[3], (proto, o)
    return None


def flow_entries(flow, wan_ip, wan_port, lan_if, wan_if, wan_l3=False):
    """The (key, value) pair of map entries that carry a flow both ways (wan_l3: the WAN port is
    a PPP device, without MAC header)."""
    zone, proto, lan, lan_port, remote, remote_port = flow_pair(flow)
    family = KIND_FAMILY[flow.kind]
    out_key = pack_key(lan_if, lan, remote, flow_ident(flow, flow.key_out), lan_port, remote_port, proto)
    out_val = pack_val(wan_ip, wan_port, False, family, wan_if, wan_l3)
    in_key = pack_key(wan_if, remote, wan_ip, flow_ident(flow, flow.key), remote_port, wan_port, proto)
    in_val = pack_val(lan, lan_port, True, family, lan_if)
    return [(out_key, out_val), (in_key, in_val)]


def policy_bits(cfg):
    bits = 0
    for fam in FAMILY_BITS:
        if cfg.kind_enabled(fam):
            bits |= FAMILY_BITS[fam]
    return bits


class OffloadPlan:
    """What is offloaded. The daemon calls, once a second, pending() for the pairs whose
    conntrack entries it must look up, learn() with what it found, then desired() and installs
    the difference; refresh_due() every few seconds with the carried counters."""

    def __init__(self, lan_if, wan_if, retry=2.0, wan_l3=False):
        self.lan_if = lan_if
        self.wan_if = wan_if
        self.wan_l3 = wan_l3
        self.retry = retry
        self.trans = {}     # pair -> (wan_ip, wan_port, ct)
        self.tried = {}     # pair -> time of the last conntrack look without a result
        self.activity = {}  # pair -> carried packets (both ways) at the last refresh
        self._entries = {}  # (pair, translation, kind, key, key_out) -> flow_entries (packing is the costly part)

    def pending(self, flows, now):
        """[pair] of offloadable flows without a translation, not tried recently."""
        out = []
        seen = set()
        for f in flows:
            pair = flow_pair(f)
            if pair is None or pair in self.trans or pair in seen or now - self.tried.get(pair, -1e9) < self.retry:
                continue
            seen.add(pair)
            out.append(pair)
        return out

    def learn(self, pairs, entries, now):
        """Record translations found in conntrack entries; returns the pairs that got one."""
        got = []
        for pair in pairs:
            t = find_translation(pair, entries)
            if t is None:
                self.tried[pair] = now
            else:
                self.trans[pair] = t
                self.tried.pop(pair, None)
                got.append(pair)
        return got

    def entries(self, f, pair, t):
        memo = (pair, t, f.kind, f.key, f.key_out)
        e = self._entries.get(memo)
        if e is None:
            e = self._entries[memo] = flow_entries(f, t[0], t[1], self.lan_if, self.wan_if, self.wan_l3)
        return e

    def desired(self, flows):
        """{key: value} the map should hold; forgets translations no flow uses any more."""
        want = {}
        used = set()
        memos = set()
        for f in flows:
            pair = flow_pair(f)
            if pair is None:
                continue
            used.add(pair)
            t = self.trans.get(pair)
            if t is not None:
                memos.add((pair, t, f.kind, f.key, f.key_out))
                for k, v in self.entries(f, pair, t):
                    want[k] = v
        for memo in list(self._entries):
            if memo not in memos:
                del self._entries[memo]
        for table in (self.trans, self.tried, self.activity):
            for pair in list(table):
                if pair not in used:
                    del table[pair]
        return want

    def check(self, pair, entry):
        """The pair's conntrack entry as just read (None: gone). A translation the entry no
        longer has is forgotten (True): the entry was made again since it was learned (flushed,
        or the host's NAT-T port planned anew) and its flows, old and new, must not go on
        carrying the old port, which may be another host's by now."""
        t = self.trans.get(pair)
        if t is None:
            return False
        now = find_translation(pair, [entry]) if entry is not None else None
        if now is not None and now[:2] == t[:2]:
            return False
        self.forget(pair)
        return True

    def forget(self, pair):
        """The pair's conntrack entry is gone: its packets go back to the stack (which makes
        a new entry) and the pair is offloaded again from that one."""
        self.trans.pop(pair, None)
        self.activity.pop(pair, None)

    def refresh_due(self, flows, counters):
        """Pairs that carried packets since the last call (their conntrack entries need a
        refresh), given counters {key: packets} of the installed entries."""
        keys = {}  # pair -> its entries' keys (all SAs of the pair: one conntrack entry)
        for f in flows:
            pair = flow_pair(f)
            t = self.trans.get(pair) if pair is not None else None
            if t is None:
                continue
            ks = keys.setdefault(pair, set())
            for k, _ in self.entries(f, pair, t):
                ks.add(k)
        due = []
        for pair in keys:
            n = 0
            for k in keys[pair]:
                n += counters.get(k, 0)
            if n != self.activity.get(pair, 0):
                due.append(pair)
            self.activity[pair] = n
        return due


def diff(installed, want):
    """(keys to delete, [(key, value)] to add or replace) taking the map from installed
    {key: value config} to want."""
    dels = [k for k in installed if k not in want]
    adds = [(k, want[k]) for k in want if installed.get(k) != val_config(want[k])]
    return dels, adds
