"""The daemon's writes and reads of its maps over netlink (Kernel.apply, Kernel.alive,
Kernel.map_elements; nat/nftnetlink.py) against a real kernel: the daemon's own table, elements
written by its own ops, read back as nft's JSON listing reads them (except JSON's signed 64-bit
numbers), counters included; an element added over netlink to a counted map has a counter."""
import os
import subprocess

import pytest

from nat import mapping as M, nftables as X
from passthrough.config import Config

pytestmark = pytest.mark.lab

NS = "pt-mapr%d" % (os.getpid() % 100000)

# map -> [(op, expected element)]; the IKE SPIs have the top bit set and clear
ELEMENTS = {
    M.LAN_ZONE: [(("add", M.LAN_ZONE, ("192.168.1.10",), 4097), (("192.168.1.10",), 4097, 0, None))],
    M.ZONE_LAN: [(("add", M.ZONE_LAN, (4097,), "192.168.1.10"), ((4097,), "192.168.1.10", 0, None))],
    M.ESP_OUT: [(("add", M.ESP_OUT, ("192.168.1.10", 0xC0FFEE01), 4097), (("192.168.1.10", 0xC0FFEE01), 4097, 0, None))],
    M.IKE_ZONE: [(("add", M.IKE_ZONE, ("203.0.113.2", 0x8000000000000001), 4097, "ike 192.168.1.10 500 500"),
                  (("203.0.113.2", 0x8000000000000001), 4097, 0, "ike 192.168.1.10 500 500")),
                 (("add", M.IKE_ZONE, ("203.0.113.3", 0x1122334455667788), 4098),
                  (("203.0.113.3", 0x1122334455667788), 4098, 0, None))],
    M.ESP_ZONE: [(("add", M.ESP_ZONE, ("203.0.113.2", 0xFFFFFFFF), 4097, "esp 192.168.1.10 4500 4500 1"),
                  (("203.0.113.2", 0xFFFFFFFF), 4097, 0, "esp 192.168.1.10 4500 4500 1"))],
    M.L2TP_ZONE: [(("add", M.L2TP_ZONE, ("203.0.113.2", 0xBEEF), 4097), (("203.0.113.2", 0xBEEF), 4097, 0, None))],
    M.NATT_OUT: [(("add", M.NATT_OUT, ("192.168.1.10", "203.0.113.2"), 40001, "natt"),
                  (("192.168.1.10", "203.0.113.2"), 40001, 0, "natt"))],
    M.NATT_IN: [(("add", M.NATT_IN, ("203.0.113.2", 40001), 4097), (("203.0.113.2", 40001), 4097, 0, None))],
}


def netns_python(code, ns=NS):
    """What `code` prints in ns (the repository's python, run from its root), evaluated."""
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=repo, timeout=60)
    assert p.returncode == 0, p.stderr
    return eval(p.stdout)  # noqa: S307 - our own repr output


@pytest.fixture(scope="module")
def table_ns():
    assert subprocess.run(["ip", "netns", "add", NS]).returncode == 0
    try:
        text = X.replace_table("ip", X.TABLE, X.render_fastpath(Config({}), "xt", None))  # xt: no nft_queue needed
        p = subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        ops = [op for name in ELEMENTS for op, _ in ELEMENTS[name]]
        assert netns_python(KERNEL + "print((k.apply(%r), k._writer is not False))" % ops) == (0, True)
        # a counter the kernel has counted (as a packet hitting the element would)
        text = ('add element ip %s %s { 203.0.113.9 . 0x00000000deadbeef counter packets 7 bytes 700 : 4099 }\n'
                % (X.TABLE, M.IKE_ZONE))
        p = subprocess.run(["ip", "netns", "exec", NS, "nft", "-f", "-"], input=text, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    assert NS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


KERNEL = ("from nat.kernel import Kernel, parse_elements\nfrom passthrough.config import Config\n"
          "from nat import nftables as X\nk = Kernel(Config({}))\n")
READ = (KERNEL + "print({n: (sorted(k.map_elements(n)), sorted(parse_elements(k.nft.list_json('map ip %s %s' % (X.TABLE, n)))))"
        " for n in X.ELEMENT_LAYOUT})")


def test_every_map_reads_back_what_the_ops_wrote(table_ns):
    got = netns_python(READ)
    for name, cases in ELEMENTS.items():
        want = sorted(e for _, e in cases)
        if name == M.IKE_ZONE:
            want = sorted(want + [(("203.0.113.9", 0xDEADBEEF), 4099, 7, None)])
        netlink, json_listing = got[name]
        assert netlink == want, name
        assert json_listing == want, name  # the fallback reads the same (its signed numbers mended)


def test_missing_table_reads_empty():
    code = ("from nat import nftnetlink as N, nftables as X\n"
            "print([N.map_elements(X.TABLE, n, X.ELEMENT_LAYOUT[n]) for n in X.ELEMENT_LAYOUT])")
    subprocess.run(["ip", "netns", "add", NS + "e"], check=True)
    try:
        assert netns_python(code, NS + "e") == [[]] * len(X.ELEMENT_LAYOUT)
    finally:
        subprocess.run(["ip", "netns", "del", NS + "e"])


def nft_list(what):
    return subprocess.run(["ip", "netns", "exec", NS, "nft", "list"] + what.split(), capture_output=True,
                          text=True).stdout


def test_netlink_adds_carry_counters_and_twins(table_ns):
    """The kernel gives an element added without expressions the counted map's counter; every
    demux map's key-only twin has the key too."""
    for name in X.COUNTED:
        listing = nft_list("map ip %s %s" % (X.TABLE, name))
        for op, _ in ELEMENTS[name]:
            line = next(ln for ln in listing.replace(",", "\n").splitlines() if "%x" % op[2][1] in ln)
            assert "counter packets 0" in line, (name, line)
    for name, twin in X.KEYSET.items():
        listing = nft_list("set ip %s %s" % (X.TABLE, twin))
        for op, _ in ELEMENTS[name]:
            assert op[2][0] in listing, (twin, listing)


def test_a_moved_key_is_replaced_a_gone_one_is_no_failure_and_the_heartbeat_renews(table_ns):
    ops = [("add", M.LAN_ZONE, ("192.168.1.10",), 4100),  # there with 4097: replaced
           ("del", M.ESP_ZONE, ("203.0.113.7", 0x1234)),  # never there
           ("add", M.L2TP_ZONE, ("203.0.113.2", 0xCAFE), 4100)]
    code = KERNEL + ("print((k.apply(%r), k.map_elements(%r), sorted(k.map_elements(%r))))"
                     % (ops, M.LAN_ZONE, M.L2TP_ZONE))
    failed, lan, l2tp = netns_python(code)
    assert failed == 0
    assert lan == [(("192.168.1.10",), 4100, 0, None)]
    assert (("203.0.113.2", 0xCAFE), 4100, 0, None) in l2tp and len(l2tp) == 2
    netns_python(KERNEL + "k.alive(); k.alive(); print(1)")  # the second renews (delete + add)
    assert "expires" in nft_list("set ip %s %s" % (X.TABLE, X.ALIVE_SET))
    netns_python(KERNEL + "k.alive(False); print(1)")
    assert "expires" not in nft_list("set ip %s %s" % (X.TABLE, X.ALIVE_SET))
