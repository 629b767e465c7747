"""New-flow setup latency, two probes (both print one JSON line).

  inproc  (run in the router namespace, daemon stopped with its table kept): the daemon's own
          per-packet work for a new flow, timed: decode_ip -> Engine.handle -> Kernel.apply
          (libnftables element add). Cases: ike_new (new IKE SA), esp_out (first packet of an
          outbound ESP SA: pending + esp_out element), esp_pair (its inbound twin: pairing + the
          esp_zone element).
  e2e     (run in a LAN namespace): wall time from sending an IKE_SA_INIT with a fresh SPI_i to
          the responder's answer, one at a time: includes the NFQUEUE round trip and the daemon
          when it runs (compare with the same probe through a kernel-only router).
"""
import argparse
import json
import os
import select
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import lablib as B  # noqa: E402


def pct(vals):
    return {"n": len(vals), "p50_ms": round(B.percentile(vals, 50), 3), "p99_ms": round(B.percentile(vals, 99), 3),
            "max_ms": round(max(vals), 3)}


def inproc(a):
    from passthrough.config import Config, load
    from passthrough.engine import Engine
    from passthrough.proto.decode import decode_ip
    from nat.kernel import Kernel

    base = load(a.config).as_dict()
    base.update(max_flows=200000, flows_per_host=200000)
    cfg = Config(base)
    eng = Engine(cfg)
    k = Kernel(cfg)
    k.backend = "xt"
    lan, srv = a.lan, a.server

    def udp_pkt(src, dst, sport, dport, payload):
        return B.ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)

    out = {"ike_new": [], "esp_out": [], "esp_pair": []}
    seed = int(time.time() * 1000) & 0xFFFFFF
    for i in range(a.count):
        spi = (seed << 32) | (i + 1)
        pk = udp_pkt(lan, srv, 500, 500, B.ike_header(spi))
        t0 = time.perf_counter()
        ops = eng.handle(decode_ip(pk), False, time.monotonic())
        k.apply(ops)
        out["ike_new"].append((time.perf_counter() - t0) * 1000)
        esp = 0x70000000 + (seed & 0xFFFF) * 0x1000 + i
        pk = B.ipv4(lan, srv, 50, struct.pack("!II", esp, 1) + b"x" * 40)
        t0 = time.perf_counter()
        ops = eng.handle(decode_ip(pk), False, time.monotonic())
        k.apply(ops)
        out["esp_out"].append((time.perf_counter() - t0) * 1000)
        pk = B.ipv4(srv, B.wan_ip(), 50, struct.pack("!II", esp + 0x100000, 1) + b"y" * 40)
        t0 = time.perf_counter()
        ops = eng.handle(decode_ip(pk), True, time.monotonic())
        k.apply(ops)
        out["esp_pair"].append((time.perf_counter() - t0) * 1000)
    res = {}
    for name in out:
        res[name] = pct(out[name])
    res["paired"] = eng.stats["paired"]
    res["flows"] = len(eng.flows)
    print(json.dumps(res))


def e2e(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", a.sport))
    seed = int(time.time() * 1000) & 0xFFFFFF
    rtts, lost = [], 0
    for i in range(a.count):
        spi = (seed << 32) | (0x80000000 + i)
        msg = B.ike_header(spi)
        t0 = time.perf_counter()
        s.sendto(msg, (a.server, 500))
        deadline = t0 + 1.0
        got = False
        while not got:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            r, _, _ = select.select([s], [], [], left)
            if r:
                data, _ = s.recvfrom(2048)
                got = data[:8] == msg[:8]
        if got:
            rtts.append((time.perf_counter() - t0) * 1000)
        else:
            lost += 1
        time.sleep(a.gap)
    res = pct(rtts) if rtts else {"n": 0}
    res["lost"] = lost
    print(json.dumps(res))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["inproc", "e2e"])
    ap.add_argument("--config")
    ap.add_argument("--lan", default="192.168.1.10")
    ap.add_argument("--server", default="203.0.113.2")
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--sport", type=int, default=500)
    ap.add_argument("--gap", type=float, default=0.002)
    a = ap.parse_args(argv)
    (inproc if a.mode == "inproc" else e2e)(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
