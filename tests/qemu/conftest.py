"""The QEMU router (openwrt_pkg/qemu): OpenWrt's userspace (procd, ubus, netifd, fw4, rpcd,
uhttpd, opkg, apk) on Debian's kernel; image built once (cached), booted once per module.

Host side: namespaces pt-qlan (switch) with pt-qlan1/pt-qlan2 behind it, pt-qwan (server .2 and
.3, scripted responders), the guest in between. passthrough is installed in the guest with the
real opkg (or apk) from /root/packages and runs under procd. Measured numbers (build, boot,
agent latency, reload time...) are collected in RESULTS and printed at the end of the run.
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


# modules sharing the opkg boot run first, the LuCI one before the router one (whose last test
# removes the packages), the apk boot last: one VM at a time, three modules on two boots
MODULE_ORDER = {"test_qemu_luci.py": 0, "test_qemu_router.py": 1, "test_qemu_packages.py": 2}


def pytest_collection_modifyitems(config, items):
    qemu = [i for i, item in enumerate(items) if item.fspath.basename in MODULE_ORDER]
    if qemu:
        ordered = sorted((items[i] for i in qemu), key=lambda it: MODULE_ORDER[it.fspath.basename])
        for i, item in zip(qemu, ordered):
            items[i] = item
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
        self.spent = False  # set once the packages are removed: the next module boots afresh
        self.tool = None  # the package manager install() used
        self.wait_for = wait_for
        self.repo = REPO

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

    def service(self, name="passthrough"):
        """procd's view of a service: `ubus call service list` -> {instance: {...}} ({} if none)."""
        res = self.guest.run("ubus call service list '{\"name\": \"%s\"}'" % name)
        try:
            return json.loads(res.stdout or "{}").get(name, {}).get("instances", {})
        except ValueError:
            return {}

    def daemon_pid(self):
        inst = self.service().get("passthrough", {})
        return inst.get("pid") if inst.get("running") else None

    def wait_daemon(self, timeout=60, not_pid=None):
        """Until procd runs the daemon and it answers `passthrough status`; returns its pid. Fails
        at once, with the daemon's log, when procd gave up respawning it (crash loop)."""
        def ready():
            pid = self.daemon_pid()
            if pid is None or pid == not_pid:
                if "crash loop" in self.guest.run("logread -e passthrough | tail -n 5").stdout:
                    raise AssertionError("passthrough keeps crashing in the guest (procd gave up):\n"
                                         + self.log_tail())
                return None
            return pid if self.guest.run("passthrough status >/dev/null 2>&1").rc == 0 else None
        try:
            return wait_for(ready, timeout, interval=0.2, what="passthrough daemon in the guest")
        except TimeoutError as e:
            raise AssertionError("%s; guest log:\n%s" % (e, self.log_tail()))

    def install(self, tool="opkg"):
        """Install passthrough's packages from /root/packages with the real opkg or apk."""
        self.tool = tool
        if tool == "opkg":
            cmd = "opkg install /root/packages/ipk/*.ipk"
        else:
            # apk 3 refuses a file that no repository or cache holds ("would be lost on next
            # reboot"); on OpenWrt 25.12 local packages go in with --force-non-repository
            cmd = "apk add --allow-untrusted --force-non-repository /root/packages/apk/*.apk"
        t = time.time()
        res = self.guest.run(cmd, timeout=300)
        self.results["install_%s" % tool] = {"seconds": round(time.time() - t, 1), "rc": res.rc}
        assert res.rc == 0, "%s -> %r" % (cmd, res)
        # reload_config compares /etc/config/* with its last snapshot (taken at boot, before the
        # package brought /etc/config/passthrough): take one now, so the first change is seen
        self.guest.run("reload_config")
        return res

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
                              "done; logread -e passthrough | tail -n 30").stdout

    def log_tail(self, n=40):
        return self.guest.run("logread -e passthrough | tail -n %d; logread | tail -n 20" % n).stdout


def _lab(tmp_path_factory, tool):
    """Boot the router, start the WAN responders, install passthrough with `tool` (opkg | apk)."""
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 missing: apt-get install qemu-system-x86"
    workdir = str(tmp_path_factory.mktemp("qemu"))
    t0 = time.time()
    router = ptqemu.Router(IMAGE, workdir=workdir)
    lab = None
    try:
        router.up()
        g = router.guest
        RESULTS["image"] = {k: router.build_info.get(k) for k in (
            "initrd_bytes", "vmlinux_bytes", "build_seconds", "userspace_build_seconds", "wall_seconds", "modules",
            "kernel")}
        RESULTS["boot_%s" % tool] = {"accel": g.accel, "seconds_to_agent": round(g.boot_seconds, 2),
                                     "guest_uptime_at_agent_start": g.boot_info.get("boot"),
                                     "fixture_seconds": round(time.time() - t0, 1)}
        lab = QemuLab(router, workdir)
        lab.start_responder(ptqemu.SERVER_IPS[0], 1701)
        lab.start_responder(ptqemu.SERVER_IPS[1], 1702)
        lab.install(tool)
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


class Labs:
    """One booted router at a time for the whole session (a TCG boot of OpenWrt's init takes
    ~2 min here): modules that want the opkg-installed router share one boot (the LuCI module,
    then the router module, whose last test removes the packages and marks it spent); asking
    for the apk one shuts the opkg one down first."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.gen = self.lab = None

    def get(self, tool):
        if self.lab is not None and self.lab.tool == tool and not self.lab.spent:
            return self.lab
        self.close()
        self.gen = _lab(self.tmp_path_factory, tool)
        self.lab = next(self.gen)
        return self.lab

    def close(self):
        gen, self.gen, self.lab = self.gen, None, None
        if gen is not None:
            try:
                next(gen)  # runs _lab's teardown (and its asserts)
            except StopIteration:
                pass


@pytest.fixture(scope="session")
def qemu_labs(tmp_path_factory):
    labs = Labs(tmp_path_factory)
    yield labs
    labs.close()


@pytest.fixture(scope="module")
def qlab(qemu_labs):
    """The router with passthrough installed by opkg (OpenWrt 24.10's package manager)."""
    return qemu_labs.get("opkg")


@pytest.fixture(scope="module")
def qlab_apk(qemu_labs):
    """The router with passthrough installed by apk (OpenWrt 25.12's package manager)."""
    return qemu_labs.get("apk")
