"""The bench's floor rulesets load into a real kernel (bench code is not otherwise run by the
tests: a ruleset that no longer parses would only show in a 15-minute bench run)."""
import os
import subprocess

import pytest

from bench import floor

pytestmark = pytest.mark.lab

KEYS = ["192.168.1.10 . 0x00051000 : %d" % floor.ZONE]


def sh(*cmd, **kw):
    return subprocess.run(list(cmd), capture_output=True, text=True, **kw)


@pytest.fixture
def router_ns():
    """A scratch namespace with the two router ports the rulesets name (br-lan, wan)."""
    ns = "pt-brs%d" % (os.getpid() % 100000)
    assert sh("ip", "netns", "add", ns).returncode == 0
    try:
        p = sh("ip", "-n", ns, "link", "add", "br-lan", "type", "veth", "peer", "name", "wan")
        assert p.returncode == 0, p.stderr
        yield ns
    finally:
        sh("ip", "netns", "del", ns)
    assert ns not in sh("ip", "netns", "list").stdout


def nft_load(ns, text):
    p = sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=text)
    assert p.returncode == 0, p.stderr
    return sh("ip", "netns", "exec", ns, "nft", "list", "table", "ip", floor.TABLE).stdout


@pytest.mark.parametrize("step", [s for s in floor.STEPS if s != "kernel"])
def test_zone_floor_steps_load(router_ns, step):
    listed = nft_load(router_ns, floor._ruleset(step, "br-lan", KEYS))
    assert "hook prerouting priority -310" in listed or "hook prerouting priority raw - 10" in listed
    if step == "lookup":
        assert "map @m" in listed
    assert ("chain steer" in listed) == (step == "steer")


@pytest.mark.parametrize("step", [s for s in floor.GATE_STEPS if s not in ("kernel", "tc_bpf")])
def test_gate_floor_steps_load(router_ns, step):
    listed = nft_load(router_ns, floor._gate_ruleset(step, "br-lan", "wan"))
    assert ("@th,64,32 != 0" in listed) == (step != "one_rule")
    assert (floor.OTHER_REMOTE in listed) == (step == "gate_shared")


def test_tc_bpf_gate_attaches_and_detaches(router_ns):
    floor._tc_gate(router_ns, ("br-lan", "wan"), True)
    for dev in ("br-lan", "wan"):
        shown = sh("ip", "netns", "exec", router_ns, "tc", "filter", "show", "dev", dev, "ingress").stdout
        assert "bytecode" in shown and "flowid 1:1" in shown, shown
    floor._tc_gate(router_ns, ("br-lan", "wan"), False)
    assert sh("ip", "netns", "exec", router_ns, "tc", "filter", "show", "dev", "wan", "ingress").stdout.strip() == ""


@pytest.mark.parametrize("step", sorted(floor.OTHER_TABLES))
def test_other_traffic_floor_steps_load(router_ns, step):
    floor._other_step(router_ns, step, ("br-lan", "wan"), True)
    listed = sh("ip", "netns", "exec", router_ns, "nft", "list", "table", "ip", floor.TABLE).stdout
    assert ("type nat hook prerouting" in listed) == (step in ("nat_hook", "table")), listed
    assert ("chain classify_out" in listed) == (step == "table")
    floor._other_step(router_ns, step, ("br-lan", "wan"), False)
    assert sh("ip", "netns", "exec", router_ns, "nft", "list", "table", "ip", floor.TABLE).returncode != 0
