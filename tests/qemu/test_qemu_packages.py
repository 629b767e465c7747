"""passthrough's packages on the QEMU router with OpenWrt's real package managers.

The image's opkg status and apk database declare the packages the image provides (pkgdb.py), so
`opkg install` / `apk add` resolve passthrough's dependencies as on a router (no --force-depends,
no --nodeps). This module boots its own router, installs with apk (OpenWrt 25.12's format), checks
that the daemon works, then removes the packages: nothing of passthrough may stay behind (tables,
tc filters, processes, procd service, files). The opkg install and `opkg remove` run in
test_qemu_router.py's boot (its fixture installs with opkg; its last test removes).
"""
import pytest

from test_qemu_router import SERVER, esp, assert_nothing_left  # noqa: F401

pytestmark = pytest.mark.qemu


def test_apk_add_resolves_dependencies_and_the_daemon_runs(qlab_apk):
    lab = qlab_apk
    out = lab.sh("apk info -e passthrough luci-app-passthrough python3-netfilterqueue")
    assert sorted(out.split()) == ["luci-app-passthrough", "passthrough", "python3-netfilterqueue"], out
    assert lab.service()["passthrough"]["running"]
    res = lab.clients("esp", [(0, esp(0x31000)), (1, esp(0x31001))])
    assert [r["replies"] for r in res] == [20, 20], res
    # a dependency apk cannot satisfy is refused (the database really is consulted)
    bad = lab.guest.run("apk add --allow-untrusted --force-non-repository --simulate /root/packages/apk/passthrough-*.apk "
                        "'no-such-package-pt'")
    assert bad.rc != 0, bad


def test_apk_del_leaves_nothing_behind(qlab_apk):
    lab = qlab_apk
    lab.spent = True
    r = lab.guest.run("apk del luci-app-passthrough passthrough python3-netfilterqueue", timeout=180)
    assert r.rc == 0, r
    assert_nothing_left(lab)
