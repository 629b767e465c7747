"""The real rpcd + uhttpd + LuCI's ucode runtime on the host (luci_harness): rpcd's ACLs over
uhttpd's /ubus JSON-RPC for root and for a second login without luci-app-passthrough's ACL group,
and the luci.passthrough rpcd ucode plugin against a stand-in of the daemon's control socket
(error cases) and against the real daemon."""
import json
import os
import socket
import threading
import time

import pytest

from passthrough.flows import Flow

pytestmark = pytest.mark.lab

ANON = "00000000000000000000000000000000"
UBUS_STATUS_PERMISSION_DENIED = 6
JSONRPC_ACCESS_DENIED = -32002


@pytest.fixture(scope="module")
def root_sid(router):
    return router.login("root")


@pytest.fixture(scope="module")
def viewer_sid(router):
    return router.login("viewer")


# --- rpcd ACLs over /ubus ----------------------------------------------------------------------------
def test_login_needs_the_right_password(router):
    st, res = router.jsonrpc(ANON, "session", "login", {"username": "root", "password": "wrong"})
    assert st == UBUS_STATUS_PERMISSION_DENIED and res is None
    st, res = router.jsonrpc(ANON, "uci", "get", {"config": "passthrough"})  # anonymous: not even reachable
    assert st["code"] == JSONRPC_ACCESS_DENIED


def test_root_reads_and_writes_passthrough_config(router, root_sid):
    st, res = router.jsonrpc(root_sid, "uci", "get", {"config": "passthrough", "section": "global"})
    assert st == 0 and res["values"]["l2tp_passthrough"] == "1"
    st, _ = router.jsonrpc(root_sid, "uci", "set", {"config": "passthrough", "section": "global",
                                                     "values": {"queue_num": "7101"}})
    assert st == 0
    st, res = router.jsonrpc(root_sid, "uci", "changes", {"config": "passthrough"})
    assert st == 0 and ["set", "global", "queue_num", "7101"] in res["changes"]
    # staged in the session, not written (that is uci commit / apply's job)
    assert "option queue_num" not in router.config_text()
    st, _ = router.jsonrpc(root_sid, "uci", "delete", {"config": "passthrough", "section": "global",
                                                        "option": "queue_num"})
    assert st == 0


def test_root_calls_luci_passthrough(router, root_sid):
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0
    assert "passthrough daemon not running" in res["error"] and res["socket"] == "/var/run/passthrough.sock"
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStats")
    assert st == 0 and "not running" in res["error"]


def test_viewer_is_denied_the_passthrough_config(router, viewer_sid):
    # the login works and luci-base's grants hold (uci get/set are allowed methods) ...
    st, res = router.jsonrpc(viewer_sid, "session", "access", {"scope": "ubus", "object": "uci", "function": "get"})
    assert st == 0 and res["access"] is True
    st, res = router.jsonrpc(viewer_sid, "session", "access", {"scope": "uci", "object": "passthrough",
                                                                "function": "read"})
    assert st == 0 and res["access"] is False
    # ... but rpcd refuses the passthrough config itself: ubus status 6, reading and writing
    st, res = router.jsonrpc(viewer_sid, "uci", "get", {"config": "passthrough"})
    assert st == UBUS_STATUS_PERMISSION_DENIED and res is None
    st, res = router.jsonrpc(viewer_sid, "uci", "set", {"config": "passthrough", "section": "global",
                                                         "values": {"l2tp_passthrough": "0"}})
    assert st == UBUS_STATUS_PERMISSION_DENIED
    st, res = router.jsonrpc(viewer_sid, "uci", "changes", {"config": "passthrough"})
    assert st in (0, UBUS_STATUS_PERMISSION_DENIED) and not (res or {}).get("changes")
    assert "l2tp_passthrough '1'" in router.config_text()


def test_viewer_is_denied_luci_passthrough(router, viewer_sid):
    for method in ("getStatus", "getStats"):
        st, res = router.jsonrpc(viewer_sid, "luci.passthrough", method)
        # uhttpd-mod-ubus asks rpcd's session.access first and refuses the call
        assert st == {"code": JSONRPC_ACCESS_DENIED, "message": "Access denied"} and res is None, (method, st)
    st, res = router.jsonrpc(viewer_sid, "session", "access", {"scope": "ubus", "object": "luci.passthrough",
                                                                "function": "getStatus"})
    assert st == 0 and res["access"] is False


def test_root_session_has_the_app_acl(router, root_sid):
    for fn in ("getStatus", "getStats"):
        st, res = router.jsonrpc(root_sid, "session", "access", {"scope": "ubus", "object": "luci.passthrough",
                                                                  "function": fn})
        assert st == 0 and res["access"] is True


# --- the plugin against a stand-in control socket ------------------------------------------------------
class FakeDaemon:
    """Answers the plugin on the root's /var/run/passthrough.sock as the daemon's
    _serve_control does (one line in, one JSON line out, close), or misbehaves on purpose."""

    def __init__(self, path):
        self.path = path
        self.mode = "ok"
        self.reply = {}
        self.commands = []
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    self.commands.append(data.decode().strip())
                    if self.mode == "ok":
                        conn.sendall((json.dumps(self.reply) + "\n").encode())
                    elif self.mode == "garbage":
                        conn.sendall(b"this is not json\n")
                    elif self.mode == "silent":
                        time.sleep(3)  # longer than the plugin waits
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def fake_daemon(router):
    d = FakeDaemon(os.path.join(router.root, "tmp", "run", "passthrough.sock"))
    try:
        yield d
    finally:
        d.close()


def flows():
    now = 500.0
    a = Flow("ike", "192.168.1.20", "203.0.113.2", 0x1122334455667788, now - 5, zone=4097)
    a.lan_port = a.wan_port = a.remote_port = 500
    b = Flow("l2tp", "192.168.1.21", "203.0.113.2", 4711, now - 2, zone=4098)
    return [a.as_dict(now), b.as_dict(now)]


def test_plugin_relays_the_daemon_status(router, root_sid, fake_daemon):
    fake_daemon.reply = {"ok": True, "flows": flows(), "summary": {"flows": 2, "l2tp_passthrough": True}}
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0 and res == {"flows": flows(), "summary": {"flows": 2, "l2tp_passthrough": True}}
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStats")
    assert st == 0 and res == {"summary": {"flows": 2, "l2tp_passthrough": True}}
    assert fake_daemon.commands == ["status", "stats"]


def test_plugin_bad_replies_are_clear_errors(router, root_sid, fake_daemon):
    fake_daemon.reply = {"ok": False, "error": "unknown command"}
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0 and "refused \"status\": unknown command" in res["error"]
    fake_daemon.mode = "garbage"
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0 and "sent no JSON object" in res["error"]
    fake_daemon.mode = "silent"
    t0 = time.monotonic()
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    took = time.monotonic() - t0
    assert st == 0 and "did not answer within 2000 ms" in res["error"] and 1.5 < took < 4, (res, took)
    # rpcd lived through all of it
    assert router.alive()["rpcd"]
    st, res = router.jsonrpc(root_sid, "session", "access", {"scope": "ubus", "object": "luci.passthrough",
                                                              "function": "getStatus"})
    assert st == 0


def test_plugin_follows_the_control_socket_option(router, root_sid, fake_daemon):
    fake_daemon.reply = {"ok": True, "flows": [], "summary": {}}
    path = "/var/run/pt-elsewhere.sock"
    router.uci_cli("set", "passthrough.global.control_socket=%s" % path, check=True)
    router.uci_cli("commit", "passthrough", check=True)
    try:
        st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
        assert st == 0 and res["socket"] == path and "No such file" in res["error"]
    finally:
        router.uci_cli("delete", "passthrough.global.control_socket", check=True)
        router.uci_cli("commit", "passthrough", check=True)
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0 and res == {"flows": [], "summary": {}}


def test_plugin_with_the_real_daemon(router, root_sid):
    router.start_daemon()
    try:
        st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
        assert st == 0 and "error" not in res, res
        assert res["flows"] == [] and res["summary"]["enabled"] is True
        assert res["summary"]["config"] == router.root + "/etc/config/passthrough"
        # Save & Apply's effect, with the harness in procd's place (reload trigger)
        router.uci_cli("set", "passthrough.global.l2tp_passthrough=0", check=True)
        router.uci_cli("commit", "passthrough", check=True)
        assert router.daemon("reload")["ok"]
        st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStats")
        assert st == 0 and res["summary"]["l2tp_passthrough"] is False
    finally:
        router.stop_daemon()
        router.uci_cli("set", "passthrough.global.l2tp_passthrough=1", check=True)
        router.uci_cli("commit", "passthrough", check=True)
    st, res = router.jsonrpc(root_sid, "luci.passthrough", "getStatus")
    assert st == 0 and "not running" in res["error"]
