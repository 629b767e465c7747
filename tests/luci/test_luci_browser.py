"""Headless Chromium against the real LuCI stack on the host (luci_harness): log in through
LuCI's login page, open Services > VPN Passthrough from the menu, see the daemon status (first
with no daemon: the plugin's clear error; then the real daemon in the harness's namespace), a bad
value is refused with LuCI's validation error and not saved, L2TP off + Save & Apply writes
/etc/config/passthrough through rpcd's apply/confirm (rollback) flow, and back on.
Screenshots go to the test's tmp dir and to $PT_ARTEFACTS when set.

The page-driving functions are luci_pages' (shared with the QEMU test)."""
import os
import re

import pytest

import luci_pages as P

pytestmark = pytest.mark.lab


def uci_option(text, name):
    m = re.search(r"^\s*option %s '([^']*)'" % name, text, re.M)
    return m.group(1) if m else None


def session_changes(router, drv):
    """The staged uci changes of the browser's own LuCI session (L.env.sessionid)."""
    sid = drv.execute_script("return L.env.sessionid")
    st, res = router.jsonrpc(sid, "uci", "changes", {"config": "passthrough"})
    assert st == 0, st
    return res.get("changes", [])


@pytest.fixture(scope="module")
def drv(tmp_path_factory):
    with P.browser(str(tmp_path_factory.mktemp("chromium"))) as d:
        yield d


def test_login_rejects_a_wrong_password(router, drv):
    with pytest.raises(P.PageError, match="refused"):
        P.login(drv, router.url, "root", "not-the-password", timeout=15)


def test_page_without_daemon_shows_the_plugin_error(router, drv, artefacts):
    P.login(drv, router.url, "root", router.password("root"))
    href = P.open_page(drv, router.url)
    assert href.endswith("/cgi-bin/luci/admin/services/passthrough")
    st = P.read_status(drv)
    assert st["error"] and "passthrough daemon not running" in st["error"], st
    table = P.read_flow_table(drv)
    assert table["columns"][:4] == ["Type", "LAN host", "Ports (LAN \u2192 WAN)", "Server"]
    assert table["rows"] == [] and "not running" in table["placeholder"]
    P.screenshot(drv, "luci-passthrough-no-daemon", str(artefacts))


def test_bad_value_shows_validation_error_and_is_not_saved(router, drv, artefacts):
    before = router.config_text()
    P.set_value(drv, "queue_num", "abc", tab="advanced")
    err = P.field_error(drv, "queue_num")
    assert err == "Expecting: value between 0 and 65535", err
    msg = P.save(drv)
    assert "contains an invalid input value" in msg and "NFQUEUE number" in msg, msg
    P.screenshot(drv, "luci-passthrough-bad-value", str(artefacts))
    P.dismiss_modal(drv)
    assert router.config_text() == before
    assert not [c for c in session_changes(router, drv) if "queue_num" in c]
    # a number out of range: the daemon's own minimum (L2TP HELLO every 60 s)
    P.set_value(drv, "udp_timeout", "60", tab="advanced")
    assert P.field_error(drv, "udp_timeout") == "Expecting: value between 120 and 86400"
    for opt in ("udp_timeout", "queue_num"):
        P.set_value(drv, opt, "", tab="advanced")
        assert P.field_error(drv, opt) == ""
    assert uci_option(router.config_text(), "udp_timeout") is None


def test_l2tp_off_save_apply_then_on(router, drv, artefacts):
    router.start_daemon()
    try:
        drv.refresh()
        P._wait(drv, lambda d: P.view_ready(d) and P.read_status(d)["summary"], 20, "the daemon summary")
        st = P.read_status(drv)
        assert st["error"] is None and st["summary"]["IPsec / L2TP / PPTP"] == "on / on / on", st
        P.screenshot(drv, "luci-passthrough-before", str(artefacts))

        assert P.toggle(drv, "l2tp_passthrough", False)
        note = P.save_apply(drv)
        assert "Configuration changes applied" in note
        text = router.config_text()
        assert uci_option(text, "l2tp_passthrough") == "0" and uci_option(text, "ipsec_passthrough") == "1", text
        assert session_changes(router, drv) == []  # committed and confirmed, nothing left staged
        assert P.flag_state(drv, "l2tp_passthrough") is False  # the reloaded page reads it back
        # procd's reload trigger in the image; here the harness sends the daemon its reload
        assert router.daemon("reload")["ok"]
        P._wait(drv, lambda d: P.read_status(d)["summary"].get("IPsec / L2TP / PPTP") == "on / off / on", 20,
                "the page's summary to show L2TP off")
        P.screenshot(drv, "luci-passthrough-after", str(artefacts))

        assert P.toggle(drv, "l2tp_passthrough", True)
        P.save_apply(drv)
        assert uci_option(router.config_text(), "l2tp_passthrough") == "1"
        assert router.daemon("reload")["ok"]
        assert router.daemon("stats")["summary"]["l2tp_passthrough"] is True
    finally:
        router.stop_daemon()


def test_screenshots_written(artefacts):
    names = sorted(os.listdir(str(artefacts)))
    for n in ("luci-passthrough-no-daemon.png", "luci-passthrough-bad-value.png", "luci-passthrough-before.png",
              "luci-passthrough-after.png"):
        assert n in names and os.path.getsize(os.path.join(str(artefacts), n)) > 10000, names
    if os.environ.get("PT_ARTEFACTS"):
        assert "luci-passthrough-after.png" in os.listdir(os.environ["PT_ARTEFACTS"])
