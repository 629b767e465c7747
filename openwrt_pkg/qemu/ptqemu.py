#!/usr/bin/env python3
"""Host side of the passthrough QEMU router: namespaces + taps, the QEMU process, the guest agent.

    ptqemu.py boot [--image DIR] [--keep]      build (cached), boot, print timings, run a few commands
    ptqemu.py down                              remove leftover pt-q<pid>-* namespaces of dead processes

Topology (namespace names pt-q<pid>-..., shown without the <pid>- part):

    pt-qlan1 192.168.1.10 ┐ veth        tap (fd) ┌─────────── guest ───────────┐ tap (fd)
    pt-qlan2 192.168.1.11 ┴─ br0 [pt-qlan] ──────│ lan -> br-lan 192.168.1.1   │──────── [pt-qwan] 203.0.113.2, .3
                                                 │ wan 203.0.113.1, passthrough│
                                                 └─────────────────────────────┘
One QEMU needs taps in two namespaces: each tap is opened inside its namespace (setns on this
thread, open /dev/net/tun, TUNSETIFF, setns back) and its fd is passed to QEMU (-netdev tap,fd=N).
The guest agent talks JSON lines over a virtio-serial port (chardev socket in a temp dir).
"""
import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PREFIX = "pt-q"  # every namespace of ours: pt-q<pid>-lan, -lan1, -lan2, -wan (one set per process)
LAN_MAC = "52:54:00:70:71:01"
WAN_MAC = "52:54:00:70:71:02"
DEFAULT_IMAGE = os.environ.get("PT_QEMU_IMAGE", "/var/cache/passthrough-qemu/image")

if REPO not in sys.path:
    sys.path.insert(0, REPO)  # run as a script too: the lab's helpers and addresses are shared
from passthrough.lab.peers import wait_for  # noqa: E402
from passthrough.lab.topology import (LAN_NET, WAN_NET, ROUTER_LAN_IP,  # noqa: E402
                                      run as sh, nsexec)

SERVER_IPS = [WAN_NET + ".2", WAN_NET + ".3"]

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(ns):
    """Run the body with this thread in network namespace ns (for opening taps there)."""
    orig = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open("/run/netns/" + ns, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % ns)
        try:
            yield
        finally:
            if _libc.setns(orig, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace")
    finally:
        os.close(target)
        os.close(orig)


def open_tap(ns, name):
    """Create tap `name` inside namespace ns; return its (inheritable) fd."""
    with in_netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    os.set_inheritable(fd, True)
    return fd


class Topology:
    """Host namespaces around the guest: LAN switch + two LAN hosts, WAN server."""

    def __init__(self, prefix=None, hosts=2):
        prefix = prefix or "%s%d-" % (PREFIX, os.getpid())
        self.prefix = prefix
        self.lan = prefix + "lan"
        self.wan = prefix + "wan"
        self.lan_hosts = [prefix + "lan%d" % (i + 1) for i in range(hosts)]
        self.fds = []

    @property
    def namespaces(self):
        return [self.lan, self.wan] + self.lan_hosts

    def lan_ip(self, i):
        return "%s.%d" % (LAN_NET, 10 + i)

    @staticmethod
    def remove_stale():
        """Namespaces pt-q<pid>-* of processes that no longer exist (a killed test run)."""
        import re

        out = sh(["ip", "netns", "list"], check=False).stdout
        for line in out.splitlines():
            m = re.match(r"^(%s(\d+)-\S+)" % re.escape(PREFIX), line.strip())
            if m and not os.path.exists("/proc/%s" % m.group(2)):
                for pid in sh(["ip", "netns", "pids", m.group(1)], check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
                sh(["ip", "netns", "del", m.group(1)], check=False)

    def up(self):
        self.remove_stale()
        self.down()
        try:
            for ns in self.namespaces:
                sh(["ip", "netns", "add", ns])
                nsexec(ns, "ip", "link", "set", "lo", "up")
            nsexec(self.lan, "ip", "link", "add", "br0", "type", "bridge")
            nsexec(self.lan, "ip", "link", "set", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0", check=False)
            nsexec(self.lan, "ip", "link", "set", "br0", "up")
            for i, host in enumerate(self.lan_hosts):
                port = "p%d" % (i + 1)
                sh(["ip", "link", "add", "eth0", "netns", host, "type", "veth", "peer", "name", port, "netns", self.lan])
                nsexec(self.lan, "ip", "link", "set", port, "master", "br0")
                nsexec(self.lan, "ip", "link", "set", port, "up")
                nsexec(host, "ip", "addr", "add", self.lan_ip(i) + "/24", "dev", "eth0")
                nsexec(host, "ip", "link", "set", "eth0", "up")
                nsexec(host, "ip", "route", "add", "default", "via", ROUTER_LAN_IP)
                for ns, dev in ((self.lan, port), (host, "eth0")):
                    nsexec(ns, "ethtool", "-K", dev, "tx", "off", check=False)
            lan_fd = open_tap(self.lan, "tap0")
            self.fds.append(lan_fd)
            nsexec(self.lan, "ip", "link", "set", "tap0", "master", "br0")
            nsexec(self.lan, "ip", "link", "set", "tap0", "up")
            wan_fd = open_tap(self.wan, "tap0")
            self.fds.append(wan_fd)
            for ip in SERVER_IPS:
                nsexec(self.wan, "ip", "addr", "add", ip + "/24", "dev", "tap0")
            nsexec(self.wan, "ip", "link", "set", "tap0", "up")
            # the LAN hosts' traffic must only reach the WAN through the guest
            return lan_fd, wan_fd
        except Exception:
            self.down()
            raise

    def close_fds(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def down(self):
        self.close_fds()
        out = sh(["ip", "netns", "list"], check=False).stdout
        have = set(line.split()[0] for line in out.splitlines() if line.strip())
        for ns in self.namespaces:
            if ns in have:
                pids = sh(["ip", "netns", "pids", ns], check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
                sh(["ip", "netns", "del", ns], check=False)


class AgentError(RuntimeError):
    pass


class Result:
    def __init__(self, reply):
        self.rc = reply.get("rc")
        self.stdout = reply.get("stdout", "")
        self.stderr = reply.get("stderr", "")
        self.ms = reply.get("ms")
        self.timed_out = bool(reply.get("timeout"))
        self.reply = reply

    @property
    def ok(self):
        return self.rc == 0

    def __repr__(self):
        return "Result(rc=%r, stdout=%r, stderr=%r)" % (self.rc, self.stdout[-2000:], self.stderr[-2000:])


class Guest:
    """The QEMU router and its agent: run(cmd, timeout), wait_ready(), shutdown()."""

    def __init__(self, image=DEFAULT_IMAGE, lan_fd=None, wan_fd=None, accel="auto", workdir=None, mem="512M",
                 append=""):
        self.image = image
        self.lan_fd, self.wan_fd = lan_fd, wan_fd
        self.accel_wanted = os.environ.get("PT_QEMU_ACCEL", accel)
        self.accel = None
        self.own_workdir = workdir is None and not os.environ.get("PT_QEMU_KEEP")
        self.workdir = workdir or tempfile.mkdtemp(prefix="pt-qemu-")
        self.mem = mem
        self.append = append
        self.proc = None
        self.sock = None
        self.reader = None
        self.replies = {}
        self.cond = threading.Condition()
        self.next_id = 1
        self.boot_seconds = None
        self.console_path = os.path.join(self.workdir, "console.log")

    # --- process ---------------------------------------------------------------------------------
    def qemu_cmd(self, accel):
        agent_sock = os.path.join(self.workdir, "agent.sock")
        cmd = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-M", "pc", "-accel", accel,
               "-cpu", "max" if accel == "tcg" else "host", "-m", self.mem, "-smp", "1",
               "-kernel", os.path.join(self.image, "vmlinux"), "-initrd", os.path.join(self.image, "initrd.cpio"),
               "-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4 tsc=reliable no_timer_check " + self.append,
               "-display", "none", "-monitor", "none", "-no-reboot",
               "-chardev", "file,id=con,path=%s" % self.console_path, "-serial", "chardev:con",
               "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % agent_sock,
               "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=agent,name=pt.agent",
               "-device", "virtio-rng-pci"]
        fds = []
        for name, fd, mac in (("lan", self.lan_fd, LAN_MAC), ("wan", self.wan_fd, WAN_MAC)):
            if fd is None:
                continue
            cmd += ["-netdev", "tap,id=%s,fd=%d" % (name, fd), "-device", "virtio-net-pci,netdev=%s,mac=%s" % (name, mac)]
            fds.append(fd)
        return cmd, fds, agent_sock

    def start(self, accel):
        cmd, fds, agent_sock = self.qemu_cmd(accel)
        if os.path.exists(agent_sock):
            os.unlink(agent_sock)
        self.qemu_log = open(os.path.join(self.workdir, "qemu.log"), "ab")
        self.t_start = time.time()
        self.proc = subprocess.Popen(cmd, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=self.qemu_log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.accel = accel
        wait_for(lambda: os.path.exists(agent_sock) or self.proc.poll() is not None, 30, what="qemu agent socket")
        if self.proc.poll() is not None:
            raise AgentError("qemu exited (%s): %s" % (self.proc.returncode, self.qemu_output()))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(agent_sock)
        with self.cond:
            self.replies = {}  # a previous (failed) start's replies and EOF must not leak in
        self.reader = threading.Thread(target=self._read, args=(self.sock,), daemon=True)
        self.reader.start()

    def qemu_output(self):
        try:
            with open(os.path.join(self.workdir, "qemu.log"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def console(self):
        try:
            with open(self.console_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def boot(self, timeout=300):  # TCG: OpenWrt's preinit + ~20 init scripts take ~110 s here
        """Start QEMU and wait for the agent. accel auto: probe KVM with a short timeout, else TCG."""
        order = {"auto": ["kvm", "tcg"], "kvm": ["kvm"], "tcg": ["tcg"]}[self.accel_wanted]
        if "kvm" in order and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            order = [a for a in order if a != "kvm"] or order
        last = None
        for accel in order:
            try:
                self.start(accel)
                self.wait_ready(timeout=15 if (accel == "kvm" and len(order) > 1) else timeout)
                return self
            except (AgentError, TimeoutError, OSError) as e:
                last = e
                self.kill()
        raise AgentError("guest did not boot (%s): %s\nconsole:\n%s\nqemu:\n%s" % (
            ",".join(order), last, self.console()[-4000:], self.qemu_output()))

    def kill(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(timeout=10)

    # --- agent protocol -------------------------------------------------------------------------
    def _read(self, sock):
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self.cond:
                    if sock is self.sock:
                        self.replies["eof"] = True
                    self.cond.notify_all()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line.decode(errors="replace"))
                except ValueError:
                    continue
                with self.cond:
                    if sock is self.sock:
                        self.replies[msg.get("id")] = msg
                    self.cond.notify_all()

    def _send(self, obj):
        with self.cond:
            rid = self.next_id
            self.next_id += 1
        obj = dict(obj, id=rid)
        self.sock.sendall((json.dumps(obj) + "\n").encode())
        return rid

    def _wait_reply(self, rid, timeout):
        deadline = time.time() + timeout
        with self.cond:
            while rid not in self.replies:
                left = deadline - time.time()
                if left <= 0 or self.replies.get("eof"):
                    raise TimeoutError("no agent reply to request %d within %.1f s" % (rid, timeout))
                self.cond.wait(left)
            return self.replies.pop(rid)

    def request(self, obj, timeout=60):
        if self.sock is None:
            raise AgentError("guest not running")
        rid = self._send(obj)
        return self._wait_reply(rid, timeout)

    def wait_ready(self, timeout=120):
        """Ping until the agent answers (procd starts it last, START=99: the boot is then done)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AgentError("qemu exited (%s)" % self.proc.returncode)
            rid = self._send({"op": "ping"})
            try:
                reply = self._wait_reply(rid, min(1.0, max(0.05, deadline - time.time())))
            except TimeoutError:
                continue
            self.boot_seconds = time.time() - self.t_start
            self.boot_info = reply
            return reply
        raise TimeoutError("guest agent not ready after %.0f s" % timeout)

    def run(self, cmd, timeout=60, check=False, input=None):
        reply = self.request({"cmd": cmd, "timeout": timeout, "input": input}, timeout=timeout + 15)
        res = Result(reply)
        if check and not res.ok:
            raise AgentError("guest: %s -> %r" % (cmd, res))
        return res

    def bg(self, cmd, log=None):
        """Start cmd detached in the guest; return its pid."""
        return self.request({"cmd": cmd, "bg": True, "log": log}, timeout=30)["pid"]

    def shutdown(self, timeout=20):
        if self.proc is None:
            return
        if self.proc.poll() is None and self.sock is not None:
            try:
                self.request({"op": "poweroff"}, timeout=5)
                self.proc.wait(timeout=timeout)
            except (OSError, TimeoutError, AgentError, subprocess.TimeoutExpired):
                pass
        self.kill()
        if getattr(self, "qemu_log", None):
            self.qemu_log.close()
        if self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Router:
    """Topology + guest, as a context manager. build: (re)build the image first (cached)."""

    def __init__(self, image=DEFAULT_IMAGE, build=True, prefix=None, accel="auto", workdir=None):
        self.image = image
        self.build = build
        self.topo = Topology(prefix)
        self.guest = None
        self.accel = accel
        self.workdir = workdir
        self.build_info = None

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()

    def up(self):
        try:
            if self.build:
                sys.path.insert(0, HERE)
                import build_image

                t = time.time()
                m = build_image.Builder(self.image, build_image.DEFAULT_CACHE).build()
                self.build_info = dict(m, wall_seconds=round(time.time() - t, 1))
            lan_fd, wan_fd = self.topo.up()
            self.guest = Guest(self.image, lan_fd, wan_fd, accel=self.accel, workdir=self.workdir)
            self.guest.boot()
            self.topo.close_fds()  # qemu holds its own copies
            return self
        except Exception:
            self.down()
            raise

    def down(self):
        if self.guest:
            self.guest.shutdown()
        self.topo.down()


def main(argv=None):
    ap = argparse.ArgumentParser(description="passthrough QEMU router")
    ap.add_argument("action", choices=["boot", "down"])
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    ap.add_argument("--keep", action="store_true", help="boot: leave it running (Ctrl-C to stop)")
    a = ap.parse_args(argv)
    if a.action == "down":
        Topology.remove_stale()
        return 0
    r = Router(a.image, accel=a.accel)
    with r:
        g = r.guest
        print(json.dumps({"accel": g.accel, "boot_seconds": round(g.boot_seconds, 2), "boot": g.boot_info,
                          "workdir": g.workdir}))
        for cmd in ("uname -r", "cat /etc/openwrt_release", "ip -br addr", "ubus call service list",
                    "/etc/init.d/passthrough status", "passthrough status"):
            res = g.run(cmd)
            print("$ %s  [rc %s, %s ms]\n%s%s" % (cmd, res.rc, res.ms, res.stdout, res.stderr))
        if a.keep:
            try:
                while True:
                    line = input("guest# ")
                    res = g.run(line)
                    print(res.stdout + res.stderr + "[rc %s]" % res.rc)
            except (EOFError, KeyboardInterrupt):
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
