"""Memory per tracked flow.

engine: tracemalloc of an Engine fed N new flows through Engine.handle (decoded packets, so the
        strings held per flow are what the daemon holds): IKE SAs, and ESP SA pairs (outbound
        packet -> pending, inbound twin -> flow), spread over 100 LAN hosts and 50 servers.
kernel: a map like the daemon's esp_zone (key remote ip . SPI, value zone, per-element counter,
        comment as the daemon writes it) filled with N elements in a scratch namespace of our
        own; the cost is the rise of the kernel's Slab + Percpu memory (/proc/meminfo), so it is
        an estimate (other activity on the machine adds noise; the larger N, the better).
bpf:    the BPF offload's flow map (nat/bpf/offload.o loaded, not attached) filled with N entries,
        measured the same way; an offloaded flow holds two entries (one per direction).
daemon: the resident set (VmRSS, and its anonymous / file-backed parts) of the daemon as shipped
        in a lab of its own, idle and then steady with 1k and 4k tracked flows (new IKE SAs
        from one LAN host, flows_per_host raised to fit), with byte code caches as on a router
        (python writes them at the daemon's first start), beside two floors: the bare
        interpreter (`python -c pass`, as the daemon is started) and the same interpreter
        after loading, by ctypes, every shared library the running daemon has mapped that is not
        part of Python itself (libnftables, libnetfilter_queue, libbpf, ...).
guest:  the same on the QEMU router (the package installed by opkg, started by procd). Its
        userspace is OpenWrt's built against Debian's glibc and its python3 is Debian's 3.11,
        so this is not a musl router's number (none is measured).
"""
import gc
import os
import shutil
import struct
import subprocess
import time
import tracemalloc

from bench import lablib as B


def _ike(lan, srv, spi):
    return B.ipv4(lan, srv, 17, struct.pack("!HHHH", 500, 500, 36, 0) + B.ike_header(spi))


def engine_bytes_per_flow(n, kind="ike"):
    from passthrough.config import Config
    from passthrough.engine import Engine
    from passthrough.proto.decode import decode_ip

    cfg = Config({"max_flows": max(16, n), "flows_per_host": n, "max_hosts": 200})
    hosts = ["192.168.%d.%d" % (1 + i // 200, 10 + i % 200) for i in range(100)]
    servers = ["203.0.113.%d" % (2 + i) for i in range(50)]
    pkts = []
    for i in range(n):
        lan, srv = hosts[i % 100], servers[(i // 100) % 50]
        if kind == "ike":
            pkts.append((_ike(lan, srv, 0x1000000000 + i), None))
        else:
            spi = 0x10000000 + i
            pkts.append((B.ipv4(lan, srv, 50, struct.pack("!II", spi, 1) + b"x" * 16),
                         B.ipv4(srv, "203.0.113.1", 50, struct.pack("!II", spi + 0x4000000, 1) + b"y" * 16)))
    gc.collect()
    tracemalloc.start()
    e = Engine(cfg)
    base = tracemalloc.get_traced_memory()[0]
    now = 1000.0
    for out, back in pkts:
        e.handle(decode_ip(out), False, now)
        if back is not None:
            e.handle(decode_ip(back), True, now)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    flows = len(e.flows)
    del e, pkts
    gc.collect()
    return {"flows": flows, "pending": 0, "bytes": used, "bytes_per_flow": round(used / float(max(1, flows)))}


def _meminfo():
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out["Slab"] + out.get("Percpu", 0)


def kernel_bytes_per_element(n, ns="pt-b-mem", samples=3):
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        results = []
        for _ in range(samples):
            B.nsexec(ns, "nft", "-f", "-", input="table ip memprobe {}\ndelete table ip memprobe\n"
                     "table ip memprobe {\n\tmap m { typeof ip saddr . @th,0,32 : ct zone; counter; }\n}\n")
            lines = []
            for i in range(n):
                lines.append('add element ip memprobe m { 10.%d.%d.%d . 0x%08x comment "esp 192.168.%d.%d 4500 4500 %d" : %d }'
                             % ((i >> 16) & 255, (i >> 8) & 255, i & 255, 0x10000000 + i, (i >> 8) & 255, i & 255,
                                0x20000000 + i, 4097 + i % 256))
            text = "\n".join(lines) + "\n"
            time.sleep(0.5)
            m0 = _meminfo()
            B.nsexec(ns, "nft", "-f", "-", input=text, timeout=300)
            time.sleep(0.5)
            m1 = _meminfo()
            results.append((m1 - m0) / float(n))
            B.nsexec(ns, "nft", "delete", "table", "ip", "memprobe")
            time.sleep(1.0)
        return {"elements": n, "bytes_per_element": round(B.median(results)), "samples": [round(x) for x in results]}
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def bpf_bytes_per_entry(n=10000, samples=3):
    from nat import bpf, offload
    results = []
    for _ in range(samples):
        prog = bpf.OffloadProgram()
        try:
            val = offload.pack_val("203.0.113.1", 4500, False, "ipsec", 2)
            keys = [offload.pack_key(1, "192.168.%d.%d" % ((i >> 8) & 255, i & 255), "203.0.113.2",
                                     struct.pack("!I", 0x10000000 + i), 4500, 4500, 17) for i in range(n)]
            time.sleep(0.5)
            m0 = _meminfo()
            for k in keys:
                prog.flows.update(k, val)
            time.sleep(0.5)
            m1 = _meminfo()
            results.append((m1 - m0) / float(n))
        finally:
            prog.close()
        time.sleep(1.0)
    return {"entries": n, "bytes_per_entry": round(B.median(results)), "samples": [round(x) for x in results],
            "bytes_per_offloaded_flow": 2 * round(B.median(results))}


# The probe, run by the interpreter under test (the host's, or the guest's python3) with the
# daemon's pid: its VmRSS parts; with "floors" also the bare interpreter's VmRSS and the same
# interpreter's after loading, by ctypes, every shared library the daemon maps that is not
# Python's own (the interpreter, lib-dynload, site-packages).
_PROBE = r"""
import ctypes, subprocess, sys
pid = int(sys.argv[1])
def rss(path):
    return dict((l.split(':')[0], int(l.split()[1])) for l in open(path) if l.split(':')[0] in ('VmRSS', 'RssAnon', 'RssFile', 'RssShmem'))
out = {'daemon': rss('/proc/%d/status' % pid)}
if sys.argv[2:] == ['floors']:
    libs = sorted(set(l.split()[-1] for l in open('/proc/%d/maps' % pid)
                      if '.so' in l and l.split()[-1].startswith('/') and '/python3' not in l.split()[-1]
                      and 'libpython' not in l.split()[-1]))
    kb = lambda text: [int(l.split()[1]) for l in text.splitlines() if l.startswith('VmRSS')][0]
    bare = subprocess.run([sys.executable, '-c', "print(open('/proc/self/status').read())"], capture_output=True, text=True)
    code = 'import ctypes, sys\nfor p in sys.argv[1:]:\n    ctypes.CDLL(p)\nprint(open("/proc/self/status").read())'
    loaded = subprocess.run([sys.executable, '-c', code] + libs, capture_output=True, text=True)
    out.update(bare=kb(bare.stdout), with_libs=kb(loaded.stdout) if loaded.returncode == 0 else None,
               error=loaded.stderr[-300:], libs=libs)
print(repr(out))
"""


def _probe_here(pid, floors=False):
    import ast
    import sys
    p = subprocess.run([sys.executable, "-c", _PROBE, str(pid)] + (["floors"] if floors else []),
                       capture_output=True, text=True, check=True)
    return ast.literal_eval(p.stdout.strip())


def _floors(p):
    """results.json's floor fields from a probe with floors."""
    out = {"floor_bare_interpreter": p["bare"], "floor_with_c_libraries": p["with_libs"],
           "c_libraries": [os.path.basename(x) for x in p["libs"]]}
    if p["with_libs"] is None:
        out["floor_error"] = p["error"]
    return out


def _grow(out, sizes, send, tracked, rss, log, what, timeout=60, settle=3.0, poll=0.5):
    """Raise the daemon to each number of tracked IKE SAs (send(first, count) sends new ones,
    tracked() reads the daemon's count), let it settle (the queue drained, the periodic work
    ran), record rss() in out["flows"]; then log the idle line with the floors."""
    have = 0
    for n in sorted(sizes):
        send(have, n - have)
        have = n
        deadline, flows = time.time() + timeout, 0
        while time.time() < deadline:
            flows = tracked()
            if flows >= n:
                break
            time.sleep(poll)
        time.sleep(settle)
        r = rss()
        r["tracked"] = flows
        out["flows"][str(n)] = r
        log("  memory %s %5d flows (tracked %d): VmRSS %d kB (anon %d, file %d)" % (
            what, n, flows, r["VmRSS"], r.get("RssAnon", 0), r.get("RssFile", 0)))
    log("  memory %s idle %d kB; floors: bare interpreter %d kB, + C libraries %s kB (%s)" % (
        what, out["idle"]["VmRSS"], out["floor_bare_interpreter"], out["floor_with_c_libraries"],
        ", ".join(out["c_libraries"]) + ("; " + out["python"] if "python" in out else "")))


def _send_ike(ns, src, dst, first, n, rate=2000):
    """n IKE_SA_INIT requests with fresh SPI_i from ns (UDP 500 -> dst:500), paced."""
    import sys
    code = ("import socket, struct, sys, time\n"
            "src, dst, first, n, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind((src, 500))\n"
            "t0 = time.monotonic()\n"
            "for i in range(n):\n"
            "    hdr = struct.pack('!QQBBBBII', first + i, 0, 0, 0x20, 34, 0x08, 0, 28)\n"
            "    s.sendto(hdr, (dst, 500))\n"
            "    lag = t0 + (i + 1) / float(rate) - time.monotonic()\n"
            "    if lag > 0:\n"
            "        time.sleep(lag)\n")
    B.nsexec(ns, sys.executable, "-c", code, src, dst, str(first), str(n), str(rate), timeout=120)


def _write_bytecode_caches():
    """The daemon as a router runs it: python reads byte code caches beside the package's .py
    files (the postinst writes them), while this machine sets PYTHONDONTWRITEBYTECODE, so
    without caches each start would compile every module: ~1.9 MB more anonymous memory that
    stays (measured). compileall writes them whatever that variable says, and python reads them
    whatever it says; git ignores __pycache__. (A PYTHONPYCACHEPREFIX would move the
    interpreter's own caches too, and the daemon's start would compile the stdlib.)"""
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "compileall", "-q", "passthrough", "nat"], cwd=repo, check=True,
                   stdout=subprocess.DEVNULL)


def daemon_rss(sizes=(1000, 4000), log=print, workdir="/run/passthrough-lab/bm", bytecode=True):
    from passthrough.cli import ask
    from passthrough.lab.harness import LabRun
    top = max(sizes)
    run = LabRun(prefix="pt-bm-", hosts=1, workdir=workdir)
    out = {"unit": "kB", "flows": {}, "bytecode_caches": bytecode}
    if bytecode:
        _write_bytecode_caches()
    try:
        run.up(responders=False, max_flows=str(top + 64), flows_per_host=str(top + 64))
        pid = run.daemon.pid
        time.sleep(3.0)
        p = _probe_here(pid, floors=True)
        out["idle"] = p["daemon"]
        out.update(_floors(p))
        lan, srv = run.lab.lan_ip(0), run.lab.server_ip(0)
        _grow(out, sizes, lambda first, count: _send_ike(run.lab.lan_hosts[0], lan, srv, 0x5000000000 + first, count),
              lambda: ask(run.control, "stats")["summary"]["flows"], lambda: _probe_here(pid)["daemon"], log, "daemon")
    finally:
        run.down()
    return out


def guest_rss(workdir, sizes=(1000, 4000), log=print):
    """The daemon on the QEMU router as shipped (installed by opkg, started by procd, byte code
    caches written by the postinst; the image's python3 and libc are Debian 12's, not a musl
    build): VmRSS idle and with 1k / 4k IKE SAs from one LAN host, and the same two floors
    measured in the guest."""
    import ast
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "qemu"))
    from qemulab import QemuLab  # first: it puts openwrt_pkg/qemu (ptqemu) on sys.path
    import ptqemu
    top = max(sizes)
    os.makedirs(workdir, exist_ok=True)
    router = ptqemu.Router(os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image-test"), workdir=workdir)
    out = {"unit": "kB", "flows": {}}
    try:
        router.up()
        lab = QemuLab(router, workdir)
        lab.install("opkg")
        lab.wait_daemon()
        lab.uci_set(max_flows=top + 64, flows_per_host=top + 64)
        lab.sh("passthrough reload")
        pid = lab.daemon_pid()
        time.sleep(5.0)

        def probe(floors=False):
            return ast.literal_eval(lab.sh("python3 - %d%s <<'EOF'\n%sEOF" % (pid, " floors" if floors else "", _PROBE),
                                           timeout=120).strip())

        p = probe(floors=True)
        out["idle"] = p["daemon"]
        out.update(_floors(p), python=lab.sh("python3 -V").strip(), accel=router.guest.accel)
        def tracked():
            try:
                return lab.stats()["flows"]
            except AssertionError:  # the control socket's answer late under TCG while the SAs arrive: ask again
                return 0

        host, server = router.topo.lan_hosts[0], ptqemu.SERVER_IPS[0]
        _grow(out, sizes, lambda first, count: _send_ike(host, router.topo.lan_ip(0), server, 0x6000000000 + first, count,
                                                         rate=500),
              tracked, lambda: probe()["daemon"], log, "guest daemon", timeout=120, settle=5.0, poll=1.0)
    finally:
        router.down()
    return out


def measure(sizes=(10000, 100000), log=print, workdir="/tmp/passthrough-bench/memory-guest"):
    out = {"engine": {}, "kernel": {}, "target_bytes": 1024}
    try:
        r = bpf_bytes_per_entry()
        out["bpf"] = r
        log("  memory BPF offload map %d entries: ~%d bytes/entry %s (2 per offloaded flow)" % (
            r["entries"], r["bytes_per_entry"], r["samples"]))
    except Exception as e:  # noqa: BLE001 - no libbpf / object: the rest still measures
        log("  memory BPF offload map: not measured (%s)" % e)
    try:
        out["daemon"] = daemon_rss(log=log)
    except Exception as e:  # noqa: BLE001 - reported, the other parts still measure
        out["daemon"] = {"error": str(e)}
        log("  memory daemon RSS: not measured (%s)" % e)
    if shutil.which("qemu-system-x86_64"):
        try:
            out["guest"] = guest_rss(workdir, log=log)
        except Exception as e:  # noqa: BLE001 - reported, the other parts still measure
            out["guest"] = {"error": "%s: %s" % (type(e).__name__, e)}
            log("  memory guest daemon RSS: not measured (%s)" % out["guest"]["error"])
    else:
        out["guest"] = {"error": "qemu-system-x86_64 missing"}
    for n in sizes:
        for kind in ("ike", "esp"):
            r = engine_bytes_per_flow(n, kind)
            out["engine"]["%s_%d" % (kind, n)] = r
            log("  memory engine %-3s %6d flows: %5d bytes/flow" % (kind, r["flows"], r["bytes_per_flow"]))
        r = kernel_bytes_per_element(n)
        out["kernel"][str(n)] = r
        log("  memory kernel map %6d elements: ~%d bytes/element %s" % (n, r["bytes_per_element"], r["samples"]))
    return out
