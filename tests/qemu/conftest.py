"""The QEMU router (openwrt_pkg/qemu): image built once (cached), booted once per module.

Host side: namespaces pt-qlan (switch) with pt-qlan1/pt-qlan2 behind it, pt-qwan (server .2 and
.3, scripted responders), the guest in between running passthrough under its init script.
Measured numbers (build, boot, agent latency, reload time...) are collected in RESULTS and
printed at the end of the run.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
QEMU_DIR = os.path.join(REPO, "openwrt_pkg", "qemu")
if QEMU_DIR not in sys.path:
    sys.path.insert(0, QEMU_DIR)

import ptqemu  # noqa: E402

IMAGE = os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image-test")
RESULTS = {}


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("qemu"):
                item.add_marker(pytest.mark.xfail(reason="needs root for namespaces and taps", run=False, strict=True))


def pytest_terminal_summary(terminalreporter):
    if RESULTS:
        terminalreporter.write_sep("-", "qemu router measurements")
        for k in sorted(RESULTS):
            terminalreporter.write_line("%s: %s" % (k, json.dumps(RESULTS[k])))


def wait_for(pred, timeout, interval=0.05, what="condition"):
    return ptqemu.wait_for(pred, timeout, interval, what)


class QemuLab:
    """What a test needs: the guest, the host namespaces, responders and clients."""

    def __init__(self, router, workdir):
        self.router = router
        self.guest = router.guest
        self.topo = router.topo
        self.workdir = workdir
        self.responders = []
        self.results = RESULTS
        self.wait_for = wait_for

    # --- host side ------------------------------------------------------------------------------
    def start_responder(self, ip, l2tp_port):
        ready = os.path.join(self.workdir, "responder-%s.ready" % ip)
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(os.path.join(self.workdir, "responder.log"), "a")
        p = subprocess.Popen(["ip", "netns", "exec", self.topo.wan, sys.executable, "-m", "passthrough.lab.responder",
                              "--bind", ip, "--l2tp-reply-port", str(l2tp_port), "--ready-file", ready],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.responders.append(p)
        wait_for(lambda: os.path.exists(ready) or p.poll() is not None, 30, what="responder on %s" % ip)
        if p.poll() is not None:
            raise RuntimeError("responder on %s exited (%s)" % (ip, p.returncode))

    def stop_responders(self):
        for p in self.responders:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.responders = []

    def client_argv(self, host, kind, *args):
        return ["ip", "netns", "exec", self.topo.lan_hosts[host], sys.executable, "-m", "passthrough.lab.client",
                kind] + [str(a) for a in args]

    def clients(self, kind, per_host_args, timeout=90):
        """One client per (host, args) at the same time; their JSON summaries in order."""
        procs = [subprocess.Popen(self.client_argv(h, kind, *args), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for h, args in per_host_args]
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            summary = None
            for line in stdout.splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if "summary" in obj:
                    summary = obj["summary"]
            assert summary is not None, "client printed no summary (rc %s): %s" % (p.returncode, stderr[-2000:])
            out.append(summary)
        return out

    def client(self, host, kind, *args, timeout=90):
        return self.clients(kind, [(host, args)], timeout=timeout)[0]

    # --- guest side ------------------------------------------------------------------------------
    def sh(self, cmd, timeout=60):
        """Run in the guest, expect success, return stdout."""
        res = self.guest.run(cmd, timeout=timeout)
        assert res.rc == 0, "guest: %s -> %r" % (cmd, res)
        return res.stdout

    def daemon_pid(self):
        res = self.guest.run("cat /run/procd-shim/passthrough/*/pid 2>/dev/null")
        pid = res.stdout.strip().split()
        if not pid:
            return None
        alive = self.guest.run("kill -0 %s" % pid[0])
        return int(pid[0]) if alive.rc == 0 else None

    def wait_daemon(self, timeout=60, not_pid=None):
        """Until the daemon (under the procd shim) answers `passthrough status`; returns its pid.
        Fails at once, with the daemon's log, when the procd shim gave up respawning it."""
        def ready():
            pid = self.daemon_pid()
            if pid is None or pid == not_pid:
                if "giving up" in self.guest.run("cat /var/log/passthrough.log 2>/dev/null").stdout:
                    raise AssertionError("passthrough keeps crashing in the guest (procd shim gave up):\n"
                                         + self.log_tail())
                return None
            return pid if self.guest.run("passthrough status >/dev/null 2>&1").rc == 0 else None
        try:
            return wait_for(ready, timeout, interval=0.2, what="passthrough daemon in the guest")
        except TimeoutError as e:
            raise AssertionError("%s; guest log:\n%s" % (e, self.log_tail()))

    def status(self):
        out = self.sh("passthrough status --json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def offload(self):
        """The daemon's BPF offload summary ({"active": ..., "entries", "pairs", "program": {...}}
        or {"active": false, "note": why}), from the control socket's `stats` command."""
        out = self.sh("PYTHONPATH=/usr/lib/passthrough python3 -c 'import json; from passthrough.cli import ask; "
                      "print(json.dumps(ask(\"/var/run/passthrough.sock\", \"stats\")[\"summary\"][\"offload\"]))'")
        return json.loads(out)

    def carried(self):
        """Packets the BPF program has carried so far (0 while it is not active)."""
        return self.offload().get("program", {}).get("carried", 0)

    def uci_set(self, **options):
        for k, v in options.items():
            self.sh("uci set passthrough.global.%s=%s" % (k, v))
        self.sh("uci commit passthrough")

    def hosts_by_zone(self):
        """LAN host indexes (0, 1) ordered by their conntrack zone, from `passthrough status`."""
        import re

        line = self.sh("passthrough status").splitlines()[0]
        pairs = re.findall(r"192\.168\.1\.(\d+)=zone (\d+)", line)
        return [int(h) - 10 for h, z in sorted(pairs, key=lambda p: int(p[1]))]

    def dump(self):
        """Guest state for assertion messages."""
        return self.guest.run("passthrough status; conntrack -L 2>/dev/null | grep -E 'esp|udp' | head -40; "
                              "for m in lan_zone esp_zone esp_out; do nft list map ip passthrough $m; "
                              "done; tail -n 30 /var/log/passthrough.log").stdout

    def log_tail(self, n=40):
        return self.guest.run("tail -n %d /var/log/passthrough.log; logread | tail -n 20" % n).stdout


@pytest.fixture(scope="module")
def qlab(tmp_path_factory):
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
    workdir = str(tmp_path_factory.mktemp("qemu"))
    t0 = time.time()
    router = ptqemu.Router(IMAGE, workdir=workdir)
    lab = None
    try:
        router.up()
        g = router.guest
        RESULTS["image"] = {k: router.build_info.get(k) for k in (
            "initrd_bytes", "vmlinux_bytes", "build_seconds", "wall_seconds", "install", "modules", "kernel")}
        RESULTS["boot"] = {"accel": g.accel, "seconds_to_agent": round(g.boot_seconds, 2),
                           "guest_boot_script": g.boot_info.get("boot"), "fixture_seconds": round(time.time() - t0, 1)}
        lab = QemuLab(router, workdir)
        lab.start_responder(ptqemu.SERVER_IPS[0], 1701)
        lab.start_responder(ptqemu.SERVER_IPS[1], 1702)
        lab.wait_daemon()
        yield lab
    except Exception:
        if router.guest is not None:
            sys.stderr.write("--- guest console ---\n%s\n" % router.guest.console()[-4000:])
        raise
    finally:
        if lab is not None:
            try:
                sys.stderr.write("--- passthrough log (guest) ---\n%s\n" % lab.log_tail())
            except Exception:
                pass
            lab.stop_responders()
        router.down()
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert router.topo.prefix not in left, "namespaces left: " + left
        if router.guest is not None and router.guest.proc is not None:
            assert router.guest.proc.poll() is not None, "qemu still running"
