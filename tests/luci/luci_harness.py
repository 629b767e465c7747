"""The real LuCI stack on the host, without QEMU: OpenWrt's ubusd, procd (its ubus objects only:
not PID 1, it does not boot), rpcd (file + ucode plugins),
uhttpd (ubus + ucode handlers), ucode and uci, built from upstream by openwrt_pkg/qemu/userspace.py,
with luci-base, the bootstrap theme, luci-mod-* and luci-app-passthrough laid out by
openwrt_pkg/qemu/luci_layout.py, in a chroot (the host's glibc libraries copied in, no mounts),
started inside a network namespace of its own (or one the caller gives, e.g. a lab's router).

    with LuciRouter(workdir) as r:      # builds the root, starts ubusd, rpcd, uhttpd
        r.url                           # http://192.168.x.2/ (reached through a veth from the host)
        sid = r.login("root", r.password("root"))
        r.ubus(sid, "uci", "get", {"config": "passthrough"})   # -> (status, result)

Everything it starts is recorded by PID and ended by PID; the namespace and its veth are deleted.
Logins (in the root's /etc/config/rpcd): root (OpenWrt's default `$p$root`: the root's
/etc/shadow) with every ACL group, and `viewer` (`$p$viewer`) with luci-base's groups only,
not luci-app-passthrough's.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
QEMU_DIR = os.path.join(REPO, "openwrt_pkg", "qemu")
APP = os.path.join(REPO, "openwrt_pkg", "luci-app-passthrough")
PT_CONFIG = os.path.join(REPO, "openwrt_pkg", "passthrough", "files", "passthrough.config")
if QEMU_DIR not in sys.path:
    sys.path.insert(0, QEMU_DIR)

import luci_layout  # noqa: E402
import userspace  # noqa: E402
import ubus_http  # noqa: E402  (tests/luci is on sys.path: this file's folder)

PASSWORDS = {"root": "pt-luci-root", "viewer": "pt-luci-viewer"}
# ACL groups of the second login: what any LuCI user has, without luci-app-passthrough
VIEWER_GROUPS = ["unauthenticated", "luci-base"]
UBUS_SOCK = "/var/run/ubus/ubus.sock"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C"}
HOST_TOOLS = ["/bin/dash", "/usr/bin/env"]  # /bin/sh for rpcd/ucode popen and uci-defaults


class HarnessError(RuntimeError):
    pass


def wait_for(pred, timeout, what, interval=0.05):
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise HarnessError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def run(argv, check=True, timeout=30, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise HarnessError("`%s` failed (%d): %s" % (" ".join(argv), r.returncode, (r.stderr or r.stdout).strip()))
    return r


def crypt_hash(password):
    salt = os.urandom(6).hex()
    return run(["openssl", "passwd", "-5", "-salt", salt, password]).stdout.strip()


def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def build_root(root, manifest=None, apps=(APP,)):
    """The chroot: LuCI + its OpenWrt deps (luci_layout), host glibc libs, a shell, config."""
    m = manifest or userspace.Userspace().build()
    if os.path.exists(root):
        shutil.rmtree(root)
    rep = luci_layout.install_luci(root, m["trees"]["luci"], m["stage"], m["trees"]["openwrt"], apps=apps,
                                   rpcd_tree=m["trees"].get("rpcd"))
    # procd (not a LuCI dependency, so not luci_layout's): started as a plain process it only
    # serves its ubus objects (`system` board/info for LuCI's header and status page, `service`
    # for rpcd's config.change events), no boot
    shutil.copy2(os.path.join(m["stage"], "usr", "sbin", "procd"), root + "/sbin/procd")
    for tool in HOST_TOOLS:
        dest = root + ("/bin/sh" if tool == "/bin/dash" else tool)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(tool, dest)
    _copy_host_libs(root)
    os.makedirs(root + "/dev", exist_ok=True)
    for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("random", 1, 8), ("urandom", 1, 9)):
        p = root + "/dev/" + name
        if not os.path.exists(p):
            os.mknod(p, 0o666 | 0o020000, os.makedev(major, minor))
            os.chmod(p, 0o666)
    for d in ("/tmp", "/root", "/etc/config"):
        os.makedirs(root + d, exist_ok=True)
    os.chmod(root + "/tmp", 0o1777)
    if not os.path.lexists(root + "/var"):
        os.symlink("tmp", root + "/var")
    elif os.path.isdir(root + "/var") and not os.path.islink(root + "/var"):
        shutil.rmtree(root + "/var")
        os.symlink("tmp", root + "/var")
    _write(root, "/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nviewer:x:1000:1000:viewer:/tmp:/bin/false\n"
           "nobody:*:65534:65534:nobody:/var:/bin/false\n")
    _write(root, "/etc/group", "root:x:0:\nviewer:x:1000:\nnogroup:x:65534:\n")
    _write(root, "/etc/shadow", "root:%s:0:0:99999:7:::\nviewer:%s:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n" % (
        crypt_hash(PASSWORDS["root"]), crypt_hash(PASSWORDS["viewer"])), 0o600)
    _write(root, "/etc/config/rpcd", "\n".join([
        "config rpcd", "\toption socket %s" % UBUS_SOCK, "\toption timeout 30", "",
        "config login", "\toption username 'root'", "\toption password '$p$root'", "\tlist read '*'",
        "\tlist write '*'", "",
        "config login", "\toption username 'viewer'", "\toption password '$p$viewer'"]
        + ["\tlist read '%s'" % g for g in VIEWER_GROUPS] + ["\tlist write '%s'" % g for g in VIEWER_GROUPS]) + "\n",
        0o600)
    shutil.copyfile(PT_CONFIG, root + "/etc/config/passthrough")
    _write(root, "/etc/openwrt_release", "DISTRIB_ID='OpenWrt'\nDISTRIB_RELEASE='passthrough-luci-harness'\n"
           "DISTRIB_REVISION='host'\nDISTRIB_TARGET='x86/64'\nDISTRIB_DESCRIPTION='OpenWrt (LuCI harness)'\n")
    _write(root, "/tmp/sysinfo/model", "passthrough LuCI harness (host)\n")
    _write(root, "/tmp/sysinfo/board_name", "passthrough,luci-harness\n")
    _write(root, "/etc/ld.so.conf", "/lib\n/usr/lib\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n")
    run(["ldconfig", "-r", root])
    rep["uci_defaults"] = run_uci_defaults(root)
    return rep


def _write(root, path, text, mode=0o644):
    os.makedirs(os.path.dirname(root + path), exist_ok=True)
    with open(root + path, "w") as f:
        f.write(text)
    os.chmod(root + path, mode)


def _copy_host_libs(root):
    """Every host library the root's ELF files need (ldd resolves the root's own ones first)."""
    libpath = ":".join(root + d for d in ("/lib", "/usr/lib", "/usr/lib/ucode", "/usr/lib/rpcd"))
    seen = set()
    todo = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    for path in todo:
        if os.path.islink(path) or not is_elf(path):
            continue
        r = subprocess.run(["ldd", path], capture_output=True, text=True, env={"LD_LIBRARY_PATH": libpath})
        for line in r.stdout.splitlines():
            parts = line.split()
            cand = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
            if "not found" in line:
                raise HarnessError("%s: %s" % (path, line.strip()))
            if not cand.startswith("/") or cand.startswith(root) or cand in seen:
                continue
            seen.add(cand)
            real = os.path.realpath(cand)
            dest = root + cand
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not os.path.exists(dest):
                shutil.copy2(real, dest)


def run_uci_defaults(root):
    """As /etc/init.d/boot's uci_apply_defaults: each script, removed when it exits 0."""
    done = {}
    d = root + "/etc/uci-defaults"
    for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        r = subprocess.run(["chroot", root, "/bin/sh", "-c", 'cd /etc/uci-defaults && . "./%s"' % name],
                           capture_output=True, text=True, env=ENV, timeout=30)
        done[name] = r.returncode
        if r.returncode == 0:
            os.unlink(os.path.join(d, name))
    return done


def uhttpd_argv(root):
    """uhttpd's command line from the root's /etc/config/uhttpd 'main', as uhttpd.init makes it
    (the options this harness uses; no TLS)."""
    def get(opt):
        r = subprocess.run(["chroot", root, "/sbin/uci", "-q", "get", "uhttpd.main." + opt],
                           capture_output=True, text=True, env=ENV)
        return r.stdout.strip() if r.returncode == 0 else None

    argv = ["/usr/sbin/uhttpd", "-f"]
    for opt, flag, default in (("home", "-h", None), ("realm", "-r", "OpenWrt"), ("cgi_prefix", "-x", None),
                               ("ubus_prefix", "-u", None), ("ubus_socket", "-U", None),
                               ("script_timeout", "-t", None), ("network_timeout", "-T", None),
                               ("http_keepalive", "-k", None), ("tcp_keepalive", "-A", None),
                               ("max_requests", "-n", "3"), ("max_connections", "-N", None)):
        v = get(opt) or default
        if v:
            argv += [flag, v]
    for opt, flag in (("no_ubusauth", "-a"), ("rfc1918_filter", "-R")):
        if get(opt) == "1":
            argv.append(flag)
    for v in (get("ucode_prefix") or "").split():
        prefix, _, handler = v.partition("=")
        if prefix and handler and os.path.isfile(root + handler):
            argv += ["-o", prefix, "-O", handler]
    for v in (get("listen_http") or "").split():
        argv += ["-p", v]
    return argv


class LuciRouter:
    """ubusd + rpcd + uhttpd in a chroot inside a network namespace."""

    def __init__(self, workdir, netns=None, manifest=None, apps=(APP,)):
        self.workdir = os.path.abspath(workdir)
        self.root = os.path.join(self.workdir, "root")
        self.logdir = os.path.join(self.workdir, "logs")
        self.manifest = manifest
        self.apps = apps
        self.own_ns = netns is None
        tag = "%d-%d" % (os.getpid(), int(time.time() * 1000) % 100000)
        self.netns = netns or "pt-luci-" + tag
        self.veth = "ptl%dh" % (os.getpid() % 100000)  # host side; the router side is "lan0"
        self.procs = {}
        self.host_ip = self.router_ip = None
        self.url = None
        self.layout = None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout=20):
        os.makedirs(self.logdir, exist_ok=True)
        self.layout = build_root(self.root, self.manifest, self.apps)
        self._net_up()
        os.makedirs(self.root + "/tmp/run/ubus", exist_ok=True)
        self.spawn("ubusd", ["/sbin/ubusd", "-s", UBUS_SOCK])
        wait_for(lambda: os.path.exists(self.root + "/tmp/run/ubus/ubus.sock"), timeout, "ubusd's socket")
        self.spawn("procd", ["/sbin/procd", "-s", UBUS_SOCK])
        self.spawn("rpcd", ["/sbin/rpcd", "-s", UBUS_SOCK, "-t", "30"])
        wait_for(lambda: {"session", "system"} <= set(self.ubus_cli("list").stdout.split()), timeout,
                 "rpcd's session and procd's system objects")
        self.spawn("uhttpd", uhttpd_argv(self.root))
        wait_for(self._http_up, timeout, "uhttpd on %s" % self.url)
        return self

    def stop(self):
        for name in reversed(list(self.procs)):
            self._end(self.procs.pop(name))
        self._sweep()
        if self.own_ns:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        else:
            subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        self._wait_link_gone()

    def _wait_link_gone(self):
        try:
            wait_for(lambda: not os.path.exists("/sys/class/net/" + self.veth), 5, "veth removal")
        except HarnessError:
            pass

    # --- network -----------------------------------------------------------------------------------
    def _net_up(self):
        if self.own_ns:
            run(["ip", "netns", "add", self.netns])
        self.nsrun("ip", "link", "set", "lo", "up")
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)  # a stale one of this PID
        net = self._free_net()
        self.host_ip, self.router_ip = "192.168.%d.1" % net, "192.168.%d.2" % net
        run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "ptl-luci", "netns", self.netns])
        self.nsrun("ip", "link", "set", "ptl-luci", "name", "luci0")
        self.nsrun("ip", "addr", "add", self.router_ip + "/30", "dev", "luci0")
        self.nsrun("ip", "link", "set", "luci0", "up")
        run(["ip", "addr", "add", self.host_ip + "/30", "dev", self.veth])
        run(["ip", "link", "set", self.veth, "up"])
        # uhttpd listens on the router's address (no [::]: nothing here uses IPv6)
        run(["chroot", self.root, "/sbin/uci", "-q", "delete", "uhttpd.main.listen_http"], env=ENV, check=False)
        for listen in (self.router_ip + ":80", "127.0.0.1:80"):
            run(["chroot", self.root, "/sbin/uci", "add_list", "uhttpd.main.listen_http=" + listen], env=ENV)
        run(["chroot", self.root, "/sbin/uci", "commit", "uhttpd"], env=ENV)
        self.url = "http://%s/" % self.router_ip

    def _free_net(self):
        used = run(["ip", "-o", "-4", "addr", "show"]).stdout
        start = 100 + os.getpid() % 100
        for i in range(100):
            n = 100 + (start - 100 + i) % 100
            if " 192.168.%d." % n not in used:
                return n
        raise HarnessError("no free 192.168.100-199.0/30 on the host for the LuCI veth")

    def nsrun(self, *argv, check=True):
        return run(["ip", "netns", "exec", self.netns] + list(argv), check=check)

    # --- processes ---------------------------------------------------------------------------------
    def spawn(self, name, argv):
        log = open(os.path.join(self.logdir, name + ".log"), "a")
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, "chroot", self.root] + argv, env=ENV,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = p
        time.sleep(0.05)
        if p.poll() is not None:
            raise HarnessError("%s exited at once (%s): %s" % (name, p.returncode, self.log(name)))
        return p

    def log(self, name, n=40):
        try:
            with open(os.path.join(self.logdir, name + ".log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    @staticmethod
    def _end(p, timeout=5):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)

    def _sweep(self):
        """Children of ours still running in our chroot (uhttpd's handler processes, popen'd
        shells): found by their root directory, which only our processes have."""
        for _ in range(2):
            left = []
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    if os.readlink("/proc/%s/root" % pid) == self.root:
                        left.append(int(pid))
                except OSError:
                    continue
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if not left:
                return
            time.sleep(0.1)

    # --- the passthrough daemon (optional) ------------------------------------------------------------
    def start_daemon(self, devices=("br-lan", "wan"), timeout=20):
        """The real passthrough daemon in the namespace (host Python, not in the chroot), reading
        the root's /etc/config/passthrough (the file LuCI writes) and answering on the root's
        /var/run/passthrough.sock, where the plugin looks. The devices of the shipped config are
        made as veth pairs where the namespace has none of that name (a lab's router has them)."""
        from passthrough.cli import ask

        for dev in devices:
            if self.nsrun("ip", "link", "show", dev, check=False).returncode == 0:
                continue  # a lab's device
            # no dummy driver in this kernel: a veth pair, its peer unused
            self.nsrun("ip", "link", "add", dev, "type", "veth", "peer", "name", (dev + "-p")[:15])
            for d in (dev, (dev + "-p")[:15]):
                self.nsrun("ip", "link", "set", d, "up")
        self.control = self.root + "/tmp/run/passthrough.sock"
        log = open(os.path.join(self.logdir, "passthrough.log"), "a")
        p = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, "-m", "passthrough.cli", "run",
                              "--config", self.root + "/etc/config/passthrough", "--control", self.control,
                              "--no-syslog"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
        log.close()
        self.procs["passthrough"] = p

        def ready():
            if p.poll() is not None:
                raise HarnessError("passthrough daemon exited (%s): %s" % (p.returncode, self.log("passthrough")))
            try:
                return ask(self.control, "stats", timeout=1.0).get("ok")
            except (OSError, ValueError):
                return False

        wait_for(ready, timeout, "the passthrough daemon's control socket")
        return p

    def stop_daemon(self):
        p = self.procs.pop("passthrough", None)
        if p is not None:
            self._end(p, timeout=10)
        return p.returncode if p is not None else None

    def daemon(self, command):
        """One control command to the daemon (what procd's reload trigger does on a change)."""
        from passthrough.cli import ask

        return ask(self.control, command)

    def alive(self):
        return {n: p.poll() is None for n, p in self.procs.items()}

    # --- talking to it -------------------------------------------------------------------------------
    def ubus_cli(self, *args, check=False):
        return run(["chroot", self.root, "/bin/ubus", "-s", UBUS_SOCK] + list(args), env=ENV, check=check)

    def uci_cli(self, *args, check=False):
        return run(["chroot", self.root, "/sbin/uci"] + list(args), env=ENV, check=check)

    def config_text(self, name="passthrough"):
        with open(os.path.join(self.root, "etc", "config", name)) as f:
            return f.read()

    def _http_up(self):
        try:
            with urllib.request.urlopen(self.url, timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def http(self, path, data=None, headers=None, timeout=10):
        return ubus_http.http(self.url, path, data, headers, timeout)

    def jsonrpc(self, sid, obj, method, args=None):
        """One ubus call over uhttpd's /ubus JSON-RPC: (ubus status, result or None)."""
        try:
            return ubus_http.jsonrpc(self.url, sid, obj, method, args)
        except ValueError as e:
            raise HarnessError(str(e))

    ubus = jsonrpc

    def login(self, user, password=None):
        """session.login over /ubus (as LuCI's own login does through ubus): the session id."""
        st, res = self.jsonrpc("00000000000000000000000000000000", "session", "login",
                               {"username": user, "password": password or PASSWORDS[user]})
        if st != 0 or not res:
            raise HarnessError("session.login as %s failed: %r" % (user, st))
        return res["ubus_rpc_session"]

    @staticmethod
    def password(user):
        return PASSWORDS[user]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
