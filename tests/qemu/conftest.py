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
from qemulab import QemuLab  # noqa: E402

IMAGE = os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image-test")
RESULTS = {}


# modules sharing the opkg boot run first, the LuCI and interop ones before the router one (whose
# last test removes the packages), the apk boot last: one VM at a time, four modules on two boots
MODULE_ORDER = {"test_qemu_luci.py": 0, "test_qemu_interop.py": 1, "test_qemu_router.py": 2, "test_qemu_packages.py": 3}


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
        lab = QemuLab(router, workdir, RESULTS)
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
