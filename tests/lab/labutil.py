"""Shared set-up of the namespace-lab test modules: one lab per module, cleaned up after."""
import contextlib
import os
import subprocess
import sys
import time

from passthrough.lab.harness import LabRun
from passthrough.lab.topology import ROUTER_WAN_IP, nsexec


@contextlib.contextmanager
def running_lab(tag):
    """A LabRun (responders + daemon) with namespaces pt-<tag><pid>-*, removed afterwards."""
    prefix = "pt-%s%d-" % (tag, os.getpid() % 100000)
    run = LabRun(prefix=prefix, workdir="/tmp/passthrough-test-%s" % prefix.rstrip("-"))
    try:
        run.up()
        yield run
    finally:
        run.down()
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in out, "lab namespaces left behind"


def with_options(lab, options):
    """The module's lab with its daemon running on exactly these options."""
    if lab.daemon is None:
        lab.write_config(**options)
        lab.start_daemon()
    reply = lab.set_options(**options)
    assert reply["ok"], reply
    return lab


def queue_counters(lab, queue_num=7100):
    """The router's NFQUEUE counters (/proc/net/netfilter/nfnetlink_queue); zeros while unbound."""
    out = nsexec(lab.lab.router, "cat", "/proc/net/netfilter/nfnetlink_queue", check=False).stdout
    for line in out.splitlines():
        f = line.split()
        if f and int(f[0]) == queue_num:
            return {"waiting": int(f[2]), "overflow_dropped": int(f[5]), "user_dropped": int(f[6]), "enqueued": int(f[7])}
    return {"waiting": 0, "overflow_dropped": 0, "user_dropped": 0, "enqueued": 0}


def recreate_wan(lab, gap=0.0):
    """Delete and re-create the router's WAN veth (new ifindex, same name and addresses), as a
    PPPoE reconnect does to pppoe-wan; `gap` seconds without it in between."""
    r, s = lab.lab.router, lab.lab.server
    nsexec(r, "ip", "link", "del", "wan")
    time.sleep(gap)
    subprocess.run(["ip", "link", "add", "wan", "netns", r, "type", "veth", "peer", "name", "eth0", "netns", s],
                   check=True)
    nsexec(r, "ip", "addr", "add", ROUTER_WAN_IP + "/24", "dev", "wan")
    nsexec(r, "ip", "link", "set", "wan", "up")
    for i in range(2):
        nsexec(s, "ip", "addr", "add", lab.lab.server_ip(i) + "/24", "dev", "eth0")
    nsexec(s, "ip", "link", "set", "eth0", "up")
    for ns, dev in ((r, "wan"), (s, "eth0")):
        nsexec(ns, "ethtool", "-K", dev, "tx", "off", check=False)


def run_daemon_once(lab, config_text, timeout=20, env=None):
    """`passthrough run` in the router namespace with a config of its own; (rc, stderr)."""
    path = os.path.join(lab.workdir, "once.conf")
    with open(path, "w") as f:
        f.write(config_text)
    p = subprocess.run(["ip", "netns", "exec", lab.lab.router, sys.executable, "-m", "passthrough.cli", "run",
                        "--config", path, "--no-syslog"], capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stderr
