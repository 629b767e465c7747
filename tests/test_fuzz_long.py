"""Fuzzing every parser: decode_ip and each passthrough.proto parser, the pcap reader, the UCI /
YAML config parser, the flow-comment parser, and the engine fed whatever decode_ip makes of the
bytes. No exception may escape, decode_ip never reports "internal decoder error", and config
errors are ConfigError (the message the user sees), never anything else.

Two modes:
  pytest (default run): short hypothesis tests, a few seconds.
  long:   .venv/bin/python tests/test_fuzz_long.py --cases 1000000 [--seed N] [--engine random|atheris]
          a fast mutation fuzzer over a corpus (tests/data captures, crafted packets, config
          files), round robin over the targets; prints JSON with the counts, exits 1 on a finding.
          --engine atheris uses coverage-guided atheris on the same targets (pip install atheris).
"""
import io
import json
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from passthrough import config as configmod  # noqa: E402
from passthrough.config import ConfigError  # noqa: E402
from passthrough.engine import Engine  # noqa: E402
from passthrough.pcap import PcapReader  # noqa: E402
from passthrough.proto import ip as ipmod  # noqa: E402
from passthrough.proto.decode import KEYS, _EMPTY, decode_ip  # noqa: E402
from passthrough.proto.esp import parse_esp  # noqa: E402
from passthrough.proto.ike import parse_ike  # noqa: E402
from passthrough.proto.l2tp import parse_l2tp_ip, parse_l2tp_udp  # noqa: E402
from passthrough.proto.natt import parse_natt  # noqa: E402
from nat.mapping import parse_flow_comment  # noqa: E402

PROTOS = ("ike", "natt-keepalive", "esp", "l2tp", "other")
L4_PARSERS = (parse_ike, parse_natt, parse_esp, parse_l2tp_udp, parse_l2tp_ip, ipmod.parse_udp, ipmod.parse_tcp_ports)


class Finding(AssertionError):
    pass


# --- checks (one per target; raise Finding) ------------------------------------------------------
def check_decode(data):
    d = decode_ip(data)
    if sorted(d) != KEYS:
        raise Finding("decode_ip keys changed")
    err = d["error"]
    if err is not None and (not isinstance(err, str) or err.startswith("internal")):
        raise Finding("decode_ip error %r" % (err,))
    if d["proto"] not in PROTOS:
        raise Finding("decode_ip proto %r" % (d["proto"],))
    return d


def check_l4(parser, data, off, end, partial):
    """A proto parser called the way decode_ip calls it: 0 <= off <= end <= len(buf)."""
    d = _EMPTY.copy()
    r = parser(data, off, end, d, partial)
    if parser is ipmod.parse_udp:
        if not (isinstance(r, tuple) and len(r) == 3):
            raise Finding("parse_udp returned %r" % (r,))
        r = r[2]
    if r is not None and not isinstance(r, str):
        raise Finding("%s returned %r" % (parser.__name__, r))


def check_ip_headers(data):
    for f in (ipmod.parse_ipv4, ipmod.parse_ipv6):
        d = _EMPTY.copy()
        off, end, err = f(data, d)
        if err is None and not (0 <= off <= end <= len(data)):
            raise Finding("%s span %d..%d of %d bytes" % (f.__name__, off, end, len(data)))


def check_pcap(data):
    r = PcapReader(io.BytesIO(data))
    n = 0
    for ts, ipb, err in r:
        n += 1
        if ipb is not None:
            if not isinstance(ipb, bytes):
                raise Finding("pcap yielded %r" % type(ipb))
            check_decode(ipb)
        if err is not None and not isinstance(err, str):
            raise Finding("pcap error %r" % (err,))
        if n > 10000:
            break
    if r.error is not None and not isinstance(r.error, str):
        raise Finding("pcap reader error %r" % (r.error,))


def check_uci(text):
    try:
        configmod.parse_uci(text)
    except ConfigError:
        pass
    try:
        cfg = configmod.load_text(text, "uci", "<fuzz>")
    except ConfigError:
        return
    # A config that loads must render and load back to the same values.
    again = configmod.load_text(configmod.render_uci(cfg), "uci", "<render>")
    if again != cfg:
        raise Finding("UCI round trip changed %r" % (text,))


def check_yaml(text):
    try:
        configmod.load_text(text, "yaml", "<fuzz>")
    except ConfigError:
        pass


def check_values(values):
    try:
        configmod.Config(values)
    except ConfigError:
        pass


def check_comment(text):
    r = parse_flow_comment(text)
    if r is not None and (len(r) != 5 or r[0] not in ("ike", "esp", "natt", "l2tp")):
        raise Finding("parse_flow_comment %r -> %r" % (text, r))


_ENGINE = None


def check_engine(data, inbound, now):
    """The daemon's path: whatever decode_ip makes of the bytes goes into Engine.handle."""
    global _ENGINE
    if _ENGINE is None or len(_ENGINE.flows) > 2000:
        _ENGINE = Engine(configmod.Config({"max_flows": "4096", "flows_per_host": "64"}))
    d = check_decode(data)
    ops = _ENGINE.handle(d, inbound, now)
    for op in ops:
        if op[0] not in ("add", "del"):
            raise Finding("engine op %r" % (op,))
    if now % 50 < 1:
        _ENGINE.expire(now)


# --- corpus ----------------------------------------------------------------------------------------
def _ip4(proto, payload, src=b"\xc0\xa8\x01\x0a", dst=b"\xcb\x00\x71\x02"):
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst) + payload


def socket_aton(text):
    return bytes(int(x) for x in text.split("."))


def _udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def packet_corpus():
    out = []
    sys.path.insert(0, os.path.join(HERE, "unit"))
    try:
        from test_proto_decode import SAMPLES
        out.extend(s[1] for s in SAMPLES)
    except Exception:  # noqa: BLE001 - corpus is a help, not a requirement
        pass
    for sub in ("data/captures", "data/crafted"):
        d = os.path.join(HERE, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith((".pcap", ".pcapng")):
                with open(os.path.join(d, name), "rb") as f:
                    for ts, ipb, err in PcapReader(f):
                        if ipb:
                            out.append(ipb)
    ike = struct.pack("!QQBBBBII", 0x1122334455667788, 0, 33, 0x20, 34, 8, 0, 28 + 8) + struct.pack("!BBH", 0, 0, 8) + b"\0" * 4
    out.append(_ip4(17, _udp(500, 500, ike)))
    out.append(_ip4(17, _udp(4500, 4500, b"\0\0\0\0" + ike)))
    out.append(_ip4(17, _udp(1701, 1701, struct.pack("!HHHHHH", 0xC802, 20, 0, 0, 0, 0) + struct.pack("!HHHH", 0x8008, 0, 0, 1))))
    out.append(_ip4(115, struct.pack("!I", 0) + struct.pack("!HHI", 0xC803, 12, 7)))
    return out


def file_corpus(exts):
    out = []
    for sub in ("data/captures", "data/crafted"):
        d = os.path.join(HERE, sub)
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                if name.endswith(exts):
                    with open(os.path.join(d, name), "rb") as f:
                        out.append(f.read())
    return out


UCI_CORPUS = [
    "config passthrough 'global'\n\toption enabled '1'\n\toption l2tp_passthrough '0'\n",
    "package passthrough\n\nconfig passthrough 'global'\n\toption queue_num '7100'\n\toption mark_bit '0x10000000'\n"
    "\toption lan_device 'br-lan'\n\toption log_level 'debug'\n\tlist x 'a b'\n",
    "config passthrough global\n  option ipsec_passthrough \"off\" # comment\n  option udp_timeout 300\n",
    "config other 'x'\n\toption a 'b'\nconfig passthrough\n\toption zone_base '100'\n\toption max_hosts '16'\n",
    "config passthrough 'global'\n\toption control_socket '/var/run/p\\'x.sock'\n\toption queue_backend 'nft'\n",
]
YAML_CORPUS = ["enabled: 1\nl2tp_passthrough: no\n", "global:\n  queue_num: 7\n  lan_device: br-lan\n", "- a\n- b\n",
               "{enabled: true, max_flows: 100}", "mark_bit: 0x100\n"]


# --- mutation -----------------------------------------------------------------------------------------
INTERESTING = (0, 1, 2, 4, 0x7F, 0x80, 0xFF, 0x40, 0x20, 0x08, 0x45, 0x60, 0xC8)


def mutate(rng, data, max_len=1600):
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(9)
        n = len(b)
        if op == 0 and n:
            b[rng.randrange(n)] = rng.randrange(256)
        elif op == 1 and n:
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 2 and n:
            del b[rng.randrange(n):]
        elif op == 3:
            i = rng.randrange(n + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and n:
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 16)]
        elif op == 5 and n:
            b[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 6 and n >= 2:
            i = rng.randrange(n - 1)
            struct.pack_into("!H", b, i, rng.choice((0, 1, 0xFFFF, 0x7FFF, n, n - i, rng.randrange(65536))))
        elif op == 7 and n >= 4:
            i = rng.randrange(n - 3)
            struct.pack_into("!I", b, i, rng.choice((0, 0xFFFFFFFF, n, rng.randrange(1 << 32))))
        elif op == 8 and n:
            i, j = rng.randrange(n), rng.randrange(n)
            b[i:i] = b[j:j + rng.randint(1, 32)]
    return bytes(b[:max_len])


def mutate_text(rng, text):
    words = ["config", "option", "list", "package", "passthrough", "global", "'", '"', "\\", "#", "\n", "\t", " ",
             "enabled", "l2tp_passthrough", "queue_num", "mark_bit", "0x", "1", "0", "yes", "-1", "99999999999",
             "zone_base", "max_hosts", "lan_device", "log_level", "queue_backend", "é", "\x00", "\r"]
    s = list(text)
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(4)
        i = rng.randrange(len(s) + 1)
        if op == 0:
            s[i:i] = list(rng.choice(words))
        elif op == 1 and s:
            del s[i:i + rng.randint(1, 8)]
        elif op == 2 and s:
            s[min(i, len(s) - 1)] = chr(rng.randrange(32, 127))
        else:
            s[i:i] = [chr(rng.randrange(0, 0x300)) for _ in range(rng.randint(1, 4))]
    return "".join(s)


# --- long mode ----------------------------------------------------------------------------------------
class Fuzzer:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.packets = packet_corpus()
        self.captures = file_corpus((".pcap", ".pcapng"))
        self.counts = {}
        self.findings = []

    def one(self, target):
        rng = self.rng
        if target == "decode_random":
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
            if data and rng.random() < 0.5:
                data = bytes([rng.choice((0x45, 0x46, 0x4F, 0x60))]) + data[1:]
            check_decode(data)
        elif target == "decode_mutated":
            check_decode(mutate(rng, rng.choice(self.packets)))
        elif target == "decode_vpn_ports":
            port = rng.choice((500, 4500, 1701))
            payload = mutate(rng, rng.choice(self.packets)[28:] or b"\0", 600)
            other = rng.choice((port, rng.randrange(65536)))
            pk = _ip4(17, _udp(other, port, payload) if rng.random() < 0.5 else _udp(port, other, payload))
            check_decode(pk)
        elif target == "l4_parsers":
            data = mutate(rng, rng.choice(self.packets))
            parser = rng.choice(L4_PARSERS)
            off = rng.randint(0, len(data))
            end = rng.randint(off, len(data))
            check_l4(parser, data, off, end, rng.random() < 0.3)
            check_ip_headers(data)
        elif target == "pcap":
            check_pcap(mutate(rng, rng.choice(self.captures), 1 << 16))
        elif target == "uci":
            check_uci(mutate_text(rng, rng.choice(UCI_CORPUS)))
        elif target == "yaml":
            check_yaml(mutate_text(rng, rng.choice(YAML_CORPUS)))
        elif target == "config_values":
            keys = list(configmod.DEFAULTS) + ["bogus"]
            vals = {}
            for _ in range(rng.randint(1, 4)):
                vals[rng.choice(keys)] = rng.choice(("1", "0", "x", "", " 7 ", "0x10", -1, 70000, True, None, 3.5,
                                                     "br-lan", "a" * 20, "debug", "nft", [1], {"a": 1}))
            check_values(vals)
        elif target == "flow_comment":
            text = mutate_text(rng, rng.choice(("ike 192.168.1.10 500 500 None", "esp 10.0.0.1 None None 4096",
                                                "l2tp 192.168.1.11 1701 1702 77")))
            check_comment(text)
        elif target == "engine":
            data = mutate(rng, rng.choice(self.packets))
            check_engine(data, rng.random() < 0.5, float(self.counts.get("engine", 0)) / 10.0)
        else:
            raise ValueError(target)

    TARGETS = ("decode_random", "decode_mutated", "decode_vpn_ports", "l4_parsers", "engine", "flow_comment",
               "uci", "yaml", "config_values", "pcap")
    # Relative weights: packet paths dominate (they face the network), files and configs less.
    WEIGHTS = (20, 30, 20, 15, 10, 2, 2, 1, 1, 1)

    def run(self, cases, seconds=None, report_every=100000):
        order = []
        for t, w in zip(self.TARGETS, self.WEIGHTS):
            order.extend([t] * w)
        t0 = time.time()
        done = 0
        while done < cases:
            if seconds and time.time() - t0 > seconds:
                break
            target = order[done % len(order)]
            try:
                self.one(target)
            except Exception as e:  # noqa: BLE001 - that is the finding
                if len(self.findings) < 20:
                    self.findings.append({"target": target, "error": "%s: %s" % (type(e).__name__, e)})
            self.counts[target] = self.counts.get(target, 0) + 1
            done += 1
            if report_every and done % report_every == 0:
                sys.stderr.write("%d cases, %.0f/s, %d findings\n" % (done, done / (time.time() - t0), len(self.findings)))
        dt = time.time() - t0
        return {"cases": done, "seconds": round(dt, 1), "cases_per_second": round(done / dt) if dt else None,
                "per_target": self.counts, "findings": self.findings, "corpus_packets": len(self.packets),
                "corpus_captures": len(self.captures)}


def run_atheris(cases, seed):
    import atheris

    atheris.instrument_all()  # the parsers are already imported: instrument them in place
    counts = {"n": 0}

    def one(data):
        counts["n"] += 1
        fdp = atheris.FuzzedDataProvider(data)
        which = fdp.ConsumeIntInRange(0, 3)
        rest = fdp.ConsumeBytes(fdp.remaining_bytes())
        if which == 0:
            check_decode(rest)
        elif which == 1:
            check_decode(_ip4(17, _udp(4500, 4500, rest)) if len(rest) % 2 else _ip4(17, _udp(500, 500, rest)))
        elif which == 2:
            check_decode(_ip4(17, _udp(1701, 1701, rest)))
        else:
            check_pcap(rest)

    atheris.Setup([sys.argv[0], "-runs=%d" % cases, "-seed=%d" % seed, "-max_len=2048"], one)
    atheris.Fuzz()


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="long fuzzing run over every parser")
    ap.add_argument("--cases", type=int, default=1000000)
    ap.add_argument("--seconds", type=float, help="stop after this long even if --cases is not reached")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--engine", choices=["random", "atheris"], default="random")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    if a.engine == "atheris":
        run_atheris(a.cases, a.seed)
        return 0
    res = Fuzzer(a.seed).run(a.cases, a.seconds)
    res["seed"] = a.seed
    text = json.dumps(res, indent=1, sort_keys=True)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 1 if res["findings"] else 0


# --- short mode: hypothesis, part of the default test run ------------------------------------------------
try:
    import pytest
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # long mode runs without pytest/hypothesis
    pytest = None

if pytest is not None:
    SHORT = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    _CORPUS = []

    def corpus():
        if not _CORPUS:
            _CORPUS.extend(packet_corpus())
        return _CORPUS

    @SHORT
    @given(st.integers(0, 10 ** 6), st.binary(max_size=64), st.integers(0, 2 ** 32 - 1))
    def test_mutated_corpus_decode_and_engine(i, extra, seed):
        rng = random.Random(seed)
        pk = corpus()[i % len(corpus())]
        data = mutate(rng, pk + extra if seed % 3 == 0 else pk)
        check_decode(data)
        check_engine(data, seed % 2 == 0, float(i % 1000))

    @SHORT
    @given(st.sampled_from(L4_PARSERS), st.binary(max_size=300), st.integers(0, 300), st.integers(0, 300), st.booleans())
    def test_each_proto_parser_alone(parser, data, a, b, partial):
        off, end = sorted((min(a, len(data)), min(b, len(data))))
        check_l4(parser, data, off, end, partial)
        check_ip_headers(data)

    @SHORT
    @given(st.binary(max_size=80), st.sampled_from([0x46, 0x4F, 0x60]), st.integers(0, 255))
    def test_ip_options_ipv6_ext_headers_fragments(body, first, nh):
        """IPv4 with options and fragments, IPv6 with extension header chains."""
        if first == 0x60:
            data = struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64, b"\1" * 16, b"\2" * 16) + body
        else:
            ihl = (first & 0x0F) * 4
            opts = (body + b"\0" * 40)[:ihl - 20]
            data = struct.pack("!BBHHHBBH4s4s", first, 0, ihl + len(body), 1, nh << 5, 64, nh, 0,
                               b"\1\2\3\4", b"\5\6\7\10") + opts + body
        check_decode(data)

    @SHORT
    @given(st.integers(0, 10 ** 6), st.integers(0, 2 ** 32 - 1))
    def test_uci_and_yaml_text(i, seed):
        rng = random.Random(seed)
        check_uci(mutate_text(rng, UCI_CORPUS[i % len(UCI_CORPUS)]))
        check_yaml(mutate_text(rng, YAML_CORPUS[i % len(YAML_CORPUS)]))

    @SHORT
    @given(st.text(max_size=200))
    def test_uci_arbitrary_text(text):
        check_uci(text)

    @SHORT
    @given(st.dictionaries(st.sampled_from(list(configmod.DEFAULTS) + ["bogus"]),
                           st.one_of(st.text(max_size=12), st.integers(-5, 10 ** 7), st.booleans(), st.none(),
                                     st.floats(allow_nan=True), st.lists(st.integers(), max_size=2)), max_size=5))
    def test_config_values(values):
        check_values(values)

    @SHORT
    @given(st.text(max_size=60))
    def test_flow_comment(text):
        check_comment(text)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(0, 100), st.integers(0, 2 ** 32 - 1))
    def test_mutated_captures(i, seed):
        caps = file_corpus((".pcap", ".pcapng"))
        rng = random.Random(seed)
        check_pcap(mutate(rng, caps[i % len(caps)], 1 << 16))

    def _esp(src, dst, spi):
        return _ip4(50, struct.pack("!II", spi, 1) + b"\0" * 16, socket_aton(src), socket_aton(dst))

    def _ike_pkt(src, dst, spi, sport=500):
        return _ip4(17, _udp(sport, 500 if sport != 500 or src.startswith("192.") else 500,
                             struct.pack("!QQBBBBII", spi, 0, 0, 0x20, 34, 8, 0, 28)), socket_aton(src), socket_aton(dst))

    @settings(max_examples=int(os.environ.get("PT_FUZZ_ENGINE_EXAMPLES", "300")), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 1), st.integers(1, 6),
                              st.integers(0, 40)), min_size=1, max_size=60))
    def test_engine_kernel_maps_mirror_the_flow_table(steps):
        """Whatever the packet sequence (small tables, so they fill and expire), the element ops
        the engine emits leave the kernel maps holding exactly the keys of the flows it tracks
        (no element left behind by an expiry or a full table), and its indexes agree with it."""
        from nat.mapping import KEY_MAP, ESP_OUT
        e = Engine(configmod.Config({"max_flows": "16", "flows_per_host": "6", "flow_timeout": "30",
                                     "pair_window": "5"}))
        kernel = {}
        now = 100.0
        lans, srvs = ["192.168.1.10", "192.168.1.11", "192.168.1.12"], ["203.0.113.2", "203.0.113.3"]

        def apply(ops):
            for op in ops:
                els = kernel.setdefault(op[1], set())
                (els.add if op[0] == "add" else els.discard)(op[2])

        for action, h, sv, key, dt in steps:
            now += dt
            lan, srv = lans[h], srvs[sv]
            if action == 0:
                apply(e.handle(decode_ip(_ike_pkt(lan, srv, 0x100 + key)), False, now))
            elif action == 1:
                apply(e.handle(decode_ip(_esp(lan, srv, 0x1000 + key * 16 + h)), False, now))
            elif action == 2:
                apply(e.handle(decode_ip(_esp(srv, "203.0.113.1", 0x9000 + key)), True, now))
            elif action == 3:
                apply(e.handle(decode_ip(_ike_pkt(srv, "203.0.113.1", 0x100 + key)), True, now))
            elif action == 4:
                apply(e.expire(now))
            else:
                apply(e.handle(decode_ip(_esp(lan, srv, 0x2000 + key)), False, now))
        for name in set(KEY_MAP.values()):
            want = set((f.remote_ip, f.key) for f in e.flows.flows.values() if KEY_MAP[f.kind] == name)
            assert kernel.get(name, set()) == want, name
        want_out = set((f.lan_ip, f.key_out) for f in list(e.flows.flows.values()) + list(e.pending.values())
                       if f.kind in ("esp", "natt") and f.key_out is not None)
        assert kernel.get(ESP_OUT, set()) == want_out
        for f in e.flows.flows.values():
            assert f in e._find(f.kind, f.lan_ip, f.remote_ip)
            if f.kind == "ike":
                assert f in e._ike_to(f.remote_ip)

    def test_long_mode_smoke():
        """The long fuzzer itself works (a few thousand cases over every target)."""
        res = Fuzzer(7).run(3000, report_every=0)
        assert res["findings"] == [], res["findings"]
        assert set(res["per_target"]) == set(Fuzzer.TARGETS)


if __name__ == "__main__":
    sys.exit(main())
