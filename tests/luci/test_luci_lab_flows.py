"""The LuCI page with live flows: the harness's LuCI stack in the router namespace of a
passthrough lab (passthrough.lab: two LAN hosts, a scripted VPN responder on the WAN side), the
real daemon, IKE and L2TP from both LAN hosts. The browser sees both hosts' flows in the table;
L2TP off + Save & Apply (the harness then reloads the daemon, as procd's trigger does on the
router) blocks new L2TP while IKE still gets through; L2TP back on carries it again."""
import os

import pytest

import luci_harness
import luci_pages as P
from passthrough.lab.harness import LabRun

pytestmark = pytest.mark.lab

LAN = ["192.168.1.10", "192.168.1.11"]


@pytest.fixture(scope="module")
def lab_router(tmp_path_factory, luci_manifest):
    work = str(tmp_path_factory.mktemp("luci-lab"))
    lab = LabRun(prefix="ptl%d-" % (os.getpid() % 10000), workdir=os.path.join(work, "lab"))
    router = None
    try:
        lab.up(start_daemon=False)
        router = luci_harness.LuciRouter(os.path.join(work, "luci"), netns=lab.lab.router, manifest=luci_manifest)
        router.start()
        router.start_daemon()
        yield lab, router
    finally:
        if router is not None:
            router.stop()
        lab.down()


def traffic(lab, kind, tid_or_spi, hosts=(0, 1)):
    srv = lab.lab.server_ip(0)
    args = []
    for h in hosts:
        key = ["--tid", str(tid_or_spi + h)] if kind == "l2tp" else ["--spi", hex(tid_or_spi + h)]
        args.append(["--server", srv] + key + ["--count", 4, "--wait", 0.5, "--setup-timeout", 2])
    return [r["replies"] for r in lab.clients(kind, args)]


def kinds_by_host(table):
    return sorted((r["Type"], r["LAN host"]) for r in table["rows"])


def test_flows_of_two_lan_hosts_and_l2tp_switch(lab_router, tmp_path_factory, artefacts):
    lab, router = lab_router
    assert traffic(lab, "ike", 0x21000) == [4, 4]
    assert traffic(lab, "l2tp", 700) == [4, 4]
    with P.browser(str(tmp_path_factory.mktemp("chromium-lab"))) as drv:
        P.login(drv, router.url, "root", router.password("root"))
        P.open_page(drv, router.url)
        want = [("IKE", LAN[0]), ("IKE", LAN[1]), ("L2TP", LAN[0]), ("L2TP", LAN[1])]
        table = P.wait_flows(drv, lambda t: set(want) <= set(kinds_by_host(t)), timeout=20)
        l2tp = {r["Key (SPI / tunnel)"]: r for r in table["rows"] if r["Type"] == "L2TP"}
        assert l2tp["700"]["LAN host"] == LAN[0] and l2tp["701"]["LAN host"] == LAN[1], table
        assert l2tp["700"]["Zone"] != l2tp["701"]["Zone"]  # one conntrack zone per LAN host
        assert l2tp["700"]["Ports (LAN \u2192 WAN)"] == "1701"  # port preserved for both hosts
        assert P.read_status(drv)["summary"]["LAN hosts with a VPN"] == "2"
        P.screenshot(drv, "luci-passthrough-lab-flows", str(artefacts))

        P.toggle(drv, "l2tp_passthrough", False)
        P.save_apply(drv)
        assert "option l2tp_passthrough '0'" in router.config_text()
        assert router.daemon("reload")["ok"]
        assert traffic(lab, "l2tp", 700) == [0, 0]      # the live tunnels (700, 701) are cut
        assert traffic(lab, "l2tp", 710) == [0, 0]      # and new L2TP is dropped
        assert traffic(lab, "ike", 0x21100) == [4, 4]   # IPsec still flows
        table = P.wait_flows(drv, lambda t: not [r for r in t["rows"] if r["Type"] == "L2TP"
                                                 and r["Key (SPI / tunnel)"] in ("710", "711")]
                             and ("IKE", LAN[1]) in kinds_by_host(t), timeout=20)
        P.screenshot(drv, "luci-passthrough-lab-l2tp-off", str(artefacts))

        P.toggle(drv, "l2tp_passthrough", True)
        P.save_apply(drv)
        assert "option l2tp_passthrough '1'" in router.config_text()
        assert router.daemon("reload")["ok"]
        assert traffic(lab, "l2tp", 720) == [4, 4]
