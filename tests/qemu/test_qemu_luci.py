"""LuCI for real on the QEMU router: the guest's uhttpd + rpcd + LuCI's ucode runtime serve
luci-base, the bootstrap theme and luci-app-passthrough (installed by opkg with the other two
packages); headless Chromium on the host drives the real pages.

How the browser reaches the guest without touching the host's routes: a namespace of this module
(pt-q<pid>-web, 192.168.1.250 on a veth into the LAN switch's br0, a third LAN host) and a TCP
forwarder in this process from 127.0.0.1:<port> in the host's namespace to 192.168.1.1:80, whose
far sockets are opened inside that namespace (setns on the forwarding thread only, as ptqemu opens
its taps). Chromium (host namespace) loads http://127.0.0.1:<port>/; uhttpd sees 192.168.1.250.

- rpcd ACLs over the guest's /ubus JSON-RPC: root reads and writes the passthrough config; a
  second login (added to the guest's /etc/config/rpcd, luci-base's groups only) is denied both.
- The page: log in as root through the login page, Services > VPN Passthrough from the menu; a live
  L2TP tunnel of LAN host 0 and a live raw-ESP SA of LAN host 1 are in the flow table; L2TP off +
  Save & Apply (rpcd's uci apply with rollback + confirm; procd's config trigger has the daemon reload):
  the policy table drops L2TP, the live tunnel stops getting replies, a new one gets none, ESP and
  IKE still flow; back on through LuCI: a new tunnel works. Click-to-policy times are recorded.
- A bad value shows LuCI's validation error, Save refuses it, /etc/config/passthrough stays as is.

Screenshots go to the test's tmp dir and $PT_ARTEFACTS (docs/luci-passthrough.png is this
test's "before" shot, copied by hand).
"""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "luci"))

import luci_pages as P  # noqa: E402
import ubus_http  # noqa: E402
import ptqemu  # noqa: E402  (tests/qemu/conftest.py puts openwrt_pkg/qemu on sys.path)

pytestmark = pytest.mark.qemu

SERVER = "203.0.113.2"
LAN = ["192.168.1.10", "192.168.1.11"]
WEB_IP = "192.168.1.250"
ROUTER = ("192.168.1.1", 80)
ROOT_PASSWORD = "pt-qemu-root"
VIEWER, VIEWER_PASSWORD = "viewer", "pt-qemu-viewer"
VIEWER_GROUPS = ["unauthenticated", "luci-base"]  # luci-base's own ACL groups, not luci-app-passthrough
ANON = "0" * 32
UBUS_STATUS_PERMISSION_DENIED = 6
JSONRPC_ACCESS_DENIED = -32002


def crypt_hash(password):
    salt = os.urandom(6).hex()
    return subprocess.run(["openssl", "passwd", "-5", "-salt", salt, password], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- the browser's way in ----------------------------------------------------------------------------
class NetnsForwarder:
    """127.0.0.1:<port> in this (the host's) namespace -> dest, connected from inside netns `ns`."""

    def __init__(self, ns, dest):
        self.ns, self.dest = ns, dest
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.lock = threading.Lock()
        self.open = set()
        self.errors = []
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, name="pt-web-forwarder", daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _far_socket(self):
        with ptqemu.in_netns(self.ns):  # the socket belongs to the namespace it was made in
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def _serve(self, near):
        try:
            far = self._far_socket()
        except OSError as e:
            self.errors.append("socket in %s: %s" % (self.ns, e))
            near.close()
            return
        with self.lock:
            self.open.update((near, far))
            self.connections += 1
        try:
            far.settimeout(15)
            far.connect(self.dest)
            far.settimeout(None)
            back = threading.Thread(target=self._pipe, args=(far, near), daemon=True)
            back.start()
            self._pipe(near, far)
            back.join()
        except OSError as e:
            self.errors.append("connect %s:%s: %s" % (self.dest + (e,)))
        finally:
            with self.lock:
                self.open.discard(near)
                self.open.discard(far)
            for s in (near, far):
                try:
                    s.close()
                except OSError:
                    pass

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.lsock.close()
        with self.lock:
            socks = list(self.open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Web:
    """pt-q<pid>-web (a LAN host at 192.168.1.250 on the LAN switch) + the forwarder to the router."""

    def __init__(self, topo):
        self.ns = topo.prefix + "web"
        self.lan = topo.lan
        self.fwd = None

    def up(self):
        run = ptqemu.sh
        run(["ip", "netns", "add", self.ns])
        run(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", "web0", "netns", self.ns, "type", "veth", "peer", "name", "pweb", "netns", self.lan])
        ptqemu.nsexec(self.lan, "ip", "link", "set", "pweb", "master", "br0")
        ptqemu.nsexec(self.lan, "ip", "link", "set", "pweb", "up")
        ptqemu.nsexec(self.ns, "ip", "addr", "add", WEB_IP + "/24", "dev", "web0")
        ptqemu.nsexec(self.ns, "ip", "link", "set", "web0", "up")
        for ns, dev in ((self.lan, "pweb"), (self.ns, "web0")):
            ptqemu.nsexec(ns, "ethtool", "-K", dev, "tx", "off", check=False)
        self.fwd = NetnsForwarder(self.ns, ROUTER)
        self.url = "http://127.0.0.1:%d/" % self.fwd.port
        return self

    def down(self):
        if self.fwd is not None:
            self.fwd.close()
        # nothing of ours runs in the namespace (the forwarder's sockets are closed): the veth goes with it
        ptqemu.sh(["ip", "netns", "del", self.ns], check=False)

    def http(self, path, body=None, headers=None, timeout=30):
        return ubus_http.http(self.url, path, body, headers, timeout)

    def jsonrpc(self, sid, obj, method, args=None):
        """One ubus call over the guest uhttpd's /ubus: (ubus status or JSON-RPC error, result or None)."""
        return ubus_http.jsonrpc(self.url, sid, obj, method, args)

    def login(self, user, password):
        st, res = self.jsonrpc(ANON, "session", "login", {"username": user, "password": password})
        assert st == 0 and res and res.get("ubus_rpc_session"), (user, st, res)
        return res["ubus_rpc_session"]


@pytest.fixture(scope="module")
def web(qlab):
    w = Web(qlab.topo)
    try:
        w.up()
        qlab.wait_for(lambda: _reachable(w), 60, interval=0.5, what="the guest's uhttpd through the forwarder")
        yield w
    finally:
        w.down()
    left = ptqemu.sh(["ip", "netns", "list"], check=False).stdout
    assert w.ns not in left, left


def _reachable(w):
    try:
        code, text = w.http("/cgi-bin/luci/", timeout=10)
    except OSError:
        return False
    return code in (200, 403) and "luci" in text.lower()


@pytest.fixture(scope="module")
def logins(qlab):
    """root gets a password (the login page then really checks one); a second rpcd login 'viewer'
    with luci-base's ACL groups only is added to the guest's /etc/config/rpcd."""
    h = crypt_hash(ROOT_PASSWORD)
    qlab.sh("sed -i 's|^root:[^:]*:|root:%s:|' /etc/shadow && grep -q '^root:%s:' /etc/shadow" % (h, h))
    cmds = ["uci -q delete rpcd.viewer || true", "uci set rpcd.viewer=login", "uci set rpcd.viewer.username='%s'" % VIEWER,
            "uci set rpcd.viewer.password='%s'" % crypt_hash(VIEWER_PASSWORD)]
    cmds += ["uci add_list rpcd.viewer.%s='%s'" % (k, g) for g in VIEWER_GROUPS for k in ("read", "write")]
    # rpcd re-reads /etc/config/rpcd at every session.login: no reload (its SIGHUP re-execs rpcd,
    # and its ubus objects vanish for a moment under the next calls)
    qlab.sh(" && ".join(cmds + ["uci commit rpcd"]))
    return {"root": ROOT_PASSWORD, VIEWER: VIEWER_PASSWORD}


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("luci-artefacts"))


@pytest.fixture(scope="module")
def drv(qlab, web, logins, tmp_path_factory):
    with P.browser(str(tmp_path_factory.mktemp("chromium")), timeout=60) as d:
        yield d


def config_text(qlab):
    return qlab.sh("cat /etc/config/passthrough")


def uci_option(text, name):
    m = re.search(r"^\s*option %s '([^']*)'" % name, text, re.M)
    return m.group(1) if m else None


def policy(qlab):
    return qlab.sh("nft list table inet passthrough_policy")


# --- rpcd ACLs over the guest's /ubus ------------------------------------------------------------------
def test_rpcd_acl_root_reads_and_writes_viewer_is_denied(qlab, web, logins):
    before = config_text(qlab)
    st, res = web.jsonrpc(ANON, "session", "login", {"username": "root", "password": "wrong"})
    assert st == UBUS_STATUS_PERMISSION_DENIED and res is None, (st, res)
    st, res = web.jsonrpc(ANON, "uci", "get", {"config": "passthrough"})  # anonymous: refused by uhttpd-mod-ubus
    assert st["code"] == JSONRPC_ACCESS_DENIED, st

    root = web.login("root", logins["root"])
    st, res = web.jsonrpc(root, "uci", "get", {"config": "passthrough", "section": "global"})
    assert st == 0 and res["values"]["l2tp_passthrough"] == "1", (st, res)
    st, _ = web.jsonrpc(root, "uci", "set", {"config": "passthrough", "section": "global",
                                              "values": {"queue_num": "7101"}})
    assert st == 0, st
    st, res = web.jsonrpc(root, "uci", "changes", {"config": "passthrough"})
    assert st == 0 and ["set", "global", "queue_num", "7101"] in res["changes"], res
    # staged in the session only (uci commit / apply writes it): luci-base grants no `revert`
    st, _ = web.jsonrpc(root, "uci", "delete", {"config": "passthrough", "section": "global", "option": "queue_num"})
    assert st == 0, st
    assert config_text(qlab) == before
    st, res = web.jsonrpc(root, "luci.passthrough", "getStatus")
    assert st == 0 and "error" not in res and res["summary"]["enabled"] is True, res
    for fn in ("getStatus", "getStats"):
        st, res = web.jsonrpc(root, "session", "access", {"scope": "ubus", "object": "luci.passthrough", "function": fn})
        assert st == 0 and res["access"] is True, (fn, res)

    viewer = web.login(VIEWER, logins[VIEWER])
    st, res = web.jsonrpc(viewer, "session", "access", {"scope": "ubus", "object": "uci", "function": "get"})
    assert st == 0 and res["access"] is True, res  # luci-base's grants hold ...
    st, res = web.jsonrpc(viewer, "session", "access", {"scope": "uci", "object": "passthrough", "function": "read"})
    assert st == 0 and res["access"] is False, res  # ... but not the app's
    st, res = web.jsonrpc(viewer, "uci", "get", {"config": "passthrough"})
    assert st == UBUS_STATUS_PERMISSION_DENIED and res is None, (st, res)
    st, res = web.jsonrpc(viewer, "uci", "set", {"config": "passthrough", "section": "global",
                                                  "values": {"l2tp_passthrough": "0"}})
    assert st == UBUS_STATUS_PERMISSION_DENIED, (st, res)
    # commit is not even among luci-base's ubus grants (LuCI applies): uhttpd-mod-ubus refuses it
    st, res = web.jsonrpc(viewer, "uci", "commit", {"config": "passthrough"})
    assert st == {"code": JSONRPC_ACCESS_DENIED, "message": "Access denied"}, (st, res)
    for method in ("getStatus", "getStats"):
        st, res = web.jsonrpc(viewer, "luci.passthrough", method)
        assert st == {"code": JSONRPC_ACCESS_DENIED, "message": "Access denied"} and res is None, (method, st)
    assert config_text(qlab) == before
    assert qlab.guest.run("uci -q changes passthrough").stdout.strip() == ""


# --- the page --------------------------------------------------------------------------------------------
class LiveClient:
    """A scripted VPN client in a LAN host namespace, running in the background for `duration`,
    printing one line per reply (-v): the reply times are collected as they come."""

    def __init__(self, qlab, host, kind, *args):
        self.proc = subprocess.Popen(qlab.client_argv(host, kind, *args) + ["-v"], cwd=qlab.repo,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.times = []
        self.summary = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("event") == "reply":
                self.times.append(obj["t"])
            elif "summary" in obj:
                self.summary = obj["summary"]

    def replies(self, after=0.0, before=float("inf")):
        return len([t for t in list(self.times) if after <= t < before])

    def stop(self):
        """End it (our own process, by its Popen) and return its stderr; again: a no-op."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.reader.join(5)
        if not self.proc.stderr.closed:
            self.err = self.proc.stderr.read()
            self.proc.stderr.close()
        return getattr(self, "err", "")


def kinds_by_host(table):
    return set((r["Type"], r["LAN host"]) for r in table["rows"])


def save_apply_timed(qlab, drv, want_off):
    """Save & Apply, and on the router (a thread polling the policy table through the agent) when
    the daemon's policy says L2TP off / on: seconds from the click to the policy change and to
    LuCI's 'Configuration changes applied'."""
    seen = {}

    def watch():
        deadline = time.time() + 90
        while time.time() < deadline and "t" not in seen:
            r = qlab.guest.run("nft list table inet passthrough_policy", timeout=20)
            if r.rc == 0 and ("l2tp_passthrough off" in r.stdout) == want_off:
                seen["t"] = time.time()

    reloads = len(daemon_reloads(qlab))
    t0 = time.time()
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    P.save_apply(drv, timeout=90)
    t_applied = time.time()
    th.join(95)
    assert "t" in seen, "policy table never showed l2tp %s:\n%s" % ("off" if want_off else "on", qlab.dump())
    done = qlab.wait_for(lambda: daemon_reloads(qlab)[reloads:], 20, interval=0.2, what="the daemon's reload line")
    assert len(done) == 1, done  # one Save & Apply, one reload
    return {"click_to_policy_s": round(seen["t"] - t0, 2), "click_to_applied_and_reloaded_s": round(t_applied - t0, 2),
            "daemon_reload_ms": done[0], "t_click": t0, "t_policy": seen["t"]}


def daemon_reloads(qlab):
    """The daemon's own times of its reloads so far (its log lines, ms)."""
    return [int(ms) for ms in re.findall(r"reloaded /etc/config/passthrough in (\d+) ms",
                                         qlab.sh("logread -e passthrough"))]


def test_live_flows_of_two_hosts_l2tp_off_save_apply_cuts_l2tp_keeps_ipsec(qlab, web, logins, drv, artefacts):
    g = qlab.guest
    pid = qlab.daemon_pid()
    l2 = LiveClient(qlab, 0, "l2tp", "--server", SERVER, "--tid", 4501, "--duration", 150, "--interval", 0.1,
                    "--wait", 1.0, "--setup-timeout", 10)
    ipsec = LiveClient(qlab, 1, "esp", "--server", SERVER, "--spi", hex(0x22000), "--duration", 150, "--interval", 0.1,
                       "--wait", 1.0)
    clients = [l2, ipsec]
    try:
        qlab.wait_for(lambda: l2.replies() >= 5 and ipsec.replies() >= 5, 40, interval=0.2,
                      what="both live clients getting replies")
        with pytest.raises(P.PageError, match="refused"):
            P.login(drv, web.url, "root", "not-the-password", timeout=30)
        P.login(drv, web.url, "root", logins["root"], timeout=60)
        href = P.open_page(drv, web.url, timeout=60)
        assert href.endswith("/cgi-bin/luci/admin/services/passthrough"), href
        want = {("L2TP", LAN[0]), ("ESP", LAN[1])}
        table = P.wait_flows(drv, lambda t: want <= kinds_by_host(t), timeout=40)
        rows = {r["Type"]: r for r in table["rows"] if (r["Type"], r["LAN host"]) in want}
        assert rows["L2TP"]["Key (SPI / tunnel)"] == "4501", table
        assert rows["L2TP"]["Ports (LAN \u2192 WAN)"] == "1701", table
        assert rows["L2TP"]["Zone"] != rows["ESP"]["Zone"], table  # one conntrack zone per LAN host
        st = P.read_status(drv)
        assert st["error"] is None and st["summary"]["IPsec / L2TP / PPTP"] == "on / on / on", st
        assert st["summary"]["LAN hosts with a VPN"] == "2", st
        P.screenshot(drv, "luci-passthrough-qemu-before", artefacts)

        assert P.toggle(drv, "l2tp_passthrough", False)
        off = save_apply_timed(qlab, drv, want_off=True)
        t_cut = off["t_policy"]
        assert off["click_to_policy_s"] < 20, off  # measured 4-7 s under TCG (LuCI save + apply, procd's 1 s delay)
        text = config_text(qlab)
        assert uci_option(text, "l2tp_passthrough") == "0" and uci_option(text, "ipsec_passthrough") == "1", text
        assert "l2tp_passthrough off" in policy(qlab)
        assert P.flag_state(drv, "l2tp_passthrough") is False  # the reloaded page reads it back
        # the live ESP SA keeps getting replies for a while after the cut; the live L2TP tunnel none
        qlab.wait_for(lambda: ipsec.replies(after=t_cut + 1.0) >= 20, 40, interval=0.2,
                      what="live ESP replies after the cut")
        live_after = {"l2tp_replies_before_click": l2.replies(before=off["t_click"]),
                      "l2tp_replies_after_cut": l2.replies(after=t_cut + 0.5),
                      "esp_replies_after_cut": ipsec.replies(after=t_cut)}
        assert live_after["l2tp_replies_before_click"] > 10, live_after  # it was live
        assert live_after["l2tp_replies_after_cut"] == 0, (live_after, qlab.dump())  # and then cut
        l2.stop()
        new_l2 = qlab.client(0, "l2tp", "--server", SERVER, "--tid", 4502, "--count", 5, "--wait", 1.0,
                             "--setup-timeout", 3)
        assert new_l2["replies"] == 0, new_l2  # new tunnels blocked
        new_esp = qlab.client(1, "esp", "--server", SERVER, "--spi", hex(0x22010), "--count", 10, "--wait", 1.0)
        assert new_esp["replies"] == 10, new_esp
        ike = qlab.client(1, "ike", "--server", SERVER, "--spi", hex(0x22020), "--count", 3, "--wait", 0.5)
        assert ike["replies"] == 3, ike
        st = P._wait(drv, lambda d: (lambda s: s if s["summary"].get("IPsec / L2TP / PPTP") == "on / off / on" else None)(
            P.read_status(d)), 30, "the page's summary to show L2TP off")
        # the cut tunnel's flow is gone from the daemon's table (and the page's), the ESP SA stays
        P.wait_flows(drv, lambda t: ("ESP", LAN[1]) in kinds_by_host(t)
                     and not [r for r in t["rows"] if r["Type"] == "L2TP"], timeout=30)
        P.screenshot(drv, "luci-passthrough-qemu-after", artefacts)

        assert P.toggle(drv, "l2tp_passthrough", True)
        on = save_apply_timed(qlab, drv, want_off=False)
        assert uci_option(config_text(qlab), "l2tp_passthrough") == "1"
        again = qlab.client(0, "l2tp", "--server", SERVER, "--tid", 4503, "--count", 10, "--wait", 1.0,
                            "--setup-timeout", 5)
        assert again.get("error") is None and again["replies"] == 10 and again["peer_port"] == 1701, again
        qlab.results["luci_save_apply"] = {
            "l2tp_off": {k: v for k, v in off.items() if not k.startswith("t_")},
            "l2tp_on": {k: v for k, v in on.items() if not k.startswith("t_")}, "live": live_after}
        assert qlab.daemon_pid() == pid  # reloaded, not restarted
    finally:
        for c in clients:
            c.stop()
        if uci_option(config_text(qlab), "l2tp_passthrough") == "0":
            g.run("uci set passthrough.global.l2tp_passthrough=1 && uci commit passthrough && reload_config")


def test_bad_value_shows_validation_error_and_is_not_saved(qlab, web, drv, artefacts):
    before = config_text(qlab)
    pid = qlab.daemon_pid()
    P.open_page(drv, web.url, timeout=60)
    P.set_value(drv, "queue_num", "abc", tab="advanced")
    err = P.field_error(drv, "queue_num")
    assert err == "Expecting: value between 0 and 65535", err
    msg = P.save(drv, timeout=30)
    assert "contains an invalid input value" in msg and "NFQUEUE number" in msg, msg
    P.screenshot(drv, "luci-passthrough-qemu-bad-value", artefacts)
    P.dismiss_modal(drv)
    sid = drv.execute_script("return L.env.sessionid")
    st, res = web.jsonrpc(sid, "uci", "changes", {"config": "passthrough"})
    assert st == 0 and not [c for c in res.get("changes", []) if "queue_num" in c], res
    P.set_value(drv, "udp_timeout", "60", tab="advanced")  # below the daemon's minimum (L2TP HELLO every 60 s)
    assert P.field_error(drv, "udp_timeout") == "Expecting: value between 120 and 86400"
    for opt in ("udp_timeout", "queue_num"):
        P.set_value(drv, opt, "", tab="advanced")
        assert P.field_error(drv, opt) == ""
    assert config_text(qlab) == before
    assert uci_option(before, "udp_timeout") is None and uci_option(before, "queue_num") is None
    assert qlab.daemon_pid() == pid and "queue flags bypass to 7100" in qlab.sh("nft list table ip passthrough")


def test_screenshots_written(artefacts):
    names = sorted(os.listdir(artefacts))
    for n in ("before", "after", "bad-value"):
        p = os.path.join(artefacts, "luci-passthrough-qemu-%s.png" % n)
        assert os.path.exists(p) and os.path.getsize(p) > 10000, names
