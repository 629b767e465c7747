"""The QEMU router as a test (or the interop matrix runner) drives it: the guest, the host
namespaces, scripted WAN responders, passthrough installed by the real opkg or apk."""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
QEMU_DIR = os.path.join(REPO, "openwrt_pkg", "qemu")
if QEMU_DIR not in sys.path:
    sys.path.insert(0, QEMU_DIR)

import ptqemu  # noqa: E402


def wait_for(pred, timeout, interval=0.05, what="condition"):
    return ptqemu.wait_for(pred, timeout, interval, what)


class QemuLab:
    """What a test needs: the guest, the host namespaces, responders and clients."""

    def __init__(self, router, workdir, results=None):
        self.router = router
        self.guest = router.guest
        self.topo = router.topo
        self.workdir = workdir
        self.responders = []
        self.results = {} if results is None else results
        self.spent = False  # set once the packages are removed: the next module boots afresh
        self.tool = None  # the package manager install() used
        self.wait_for = wait_for
        self.repo = REPO
        self.last_pings = "not tried"  # what pings_carried saw last, for a timeout's message

    # --- host side ------------------------------------------------------------------------------
    def start_responder(self, ip, l2tp_port):
        ready = os.path.join(self.workdir, "responder-%s.ready" % ip)
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(os.path.join(self.workdir, "responder.log"), "a")
        p = subprocess.Popen(["ip", "netns", "exec", self.topo.wan, sys.executable, "-m", "passthrough.lab.responder",
                              "--bind", ip, "--l2tp-reply-port", str(l2tp_port), "--ready-file", ready],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.responders.append(p)
        wait_for(lambda: os.path.exists(ready) or p.poll() is not None, 30, what="responder on %s" % ip)
        if p.poll() is not None:
            raise RuntimeError("responder on %s exited (%s)" % (ip, p.returncode))

    def stop_responders(self):
        for p in self.responders:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        self.responders = []

    def client_argv(self, host, kind, *args):
        return ["ip", "netns", "exec", self.topo.lan_hosts[host], sys.executable, "-m", "passthrough.lab.client",
                kind] + [str(a) for a in args]

    def clients(self, kind, per_host_args, timeout=90):
        """One client per (host, args) at the same time; their JSON summaries in order."""
        procs = [subprocess.Popen(self.client_argv(h, kind, *args), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for h, args in per_host_args]
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            summary = None
            for line in stdout.splitlines():
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if "summary" in obj:
                    summary = obj["summary"]
            assert summary is not None, "client printed no summary (rc %s): %s" % (p.returncode, stderr[-2000:])
            out.append(summary)
        return out

    def client(self, host, kind, *args, timeout=90):
        return self.clients(kind, [(host, args)], timeout=timeout)[0]

    # --- guest side ------------------------------------------------------------------------------
    def sh(self, cmd, timeout=60):
        """Run in the guest, expect success, return stdout."""
        res = self.guest.run(cmd, timeout=timeout)
        assert res.rc == 0, "guest: %s -> %r" % (cmd, res)
        return res.stdout

    def service(self, name="passthrough"):
        """procd's view of a service: `ubus call service list` -> {instance: {...}} ({} if none)."""
        res = self.guest.run("ubus call service list '{\"name\": \"%s\"}'" % name)
        try:
            return json.loads(res.stdout or "{}").get(name, {}).get("instances", {})
        except ValueError:
            return {}

    def daemon_pid(self):
        inst = self.service().get("passthrough", {})
        return inst.get("pid") if inst.get("running") else None

    def wait_daemon(self, timeout=60, not_pid=None):
        """Until procd runs the daemon and it answers `passthrough status`; returns its pid. Fails
        at once, with the daemon's log, when procd gave up respawning it (crash loop)."""
        def ready():
            pid = self.daemon_pid()
            if pid is None or pid == not_pid:
                if "crash loop" in self.guest.run("logread -e passthrough | tail -n 5").stdout:
                    raise AssertionError("passthrough keeps crashing in the guest (procd gave up):\n"
                                         + self.log_tail())
                return None
            return pid if self.guest.run("passthrough status >/dev/null 2>&1").rc == 0 else None
        try:
            return wait_for(ready, timeout, interval=0.2, what="passthrough daemon in the guest")
        except TimeoutError as e:
            raise AssertionError("%s; guest log:\n%s" % (e, self.log_tail()))

    def install(self, tool="opkg"):
        """Install passthrough's packages from /root/packages with the real opkg or apk."""
        self.tool = tool
        if tool == "opkg":
            cmd = "opkg install /root/packages/ipk/*.ipk"
        else:
            # apk 3 refuses a file that no repository or cache holds ("would be lost on next
            # reboot"); on OpenWrt 25.12 local packages go in with --force-non-repository
            cmd = "apk add --allow-untrusted --force-non-repository /root/packages/apk/*.apk"
        t = time.time()
        res = self.guest.run(cmd, timeout=300)
        self.results["install_%s" % tool] = {"seconds": round(time.time() - t, 1), "rc": res.rc}
        assert res.rc == 0, "%s -> %r" % (cmd, res)
        # reload_config compares /etc/config/* with its last snapshot (taken at boot, before the
        # package brought /etc/config/passthrough): take one now, so the first change is seen
        self.guest.run("reload_config")
        return res

    def status(self):
        out = self.sh("passthrough status --json")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stats(self):
        """The daemon's summary from the control socket's `stats` command (offload, natt_ports, ...)."""
        out = self.sh("PYTHONPATH=/usr/lib/passthrough python3 -c 'import json; from passthrough.cli import ask; "
                      "print(json.dumps(ask(\"/var/run/passthrough.sock\", \"stats\")[\"summary\"]))'")
        return json.loads(out)

    def offload(self):
        """The daemon's BPF offload summary ({"active": ..., "entries", "pairs", "program": {...}}
        or {"active": false, "note": why})."""
        return self.stats()["offload"]

    def carried(self):
        """Packets the BPF program has carried so far (0 while it is not active)."""
        return self.offload().get("program", {}).get("carried", 0)

    def pings_carried(self, count=3):
        """c1's pings through its tunnel to s1's 10.99.0.1 (pt-vpnlab up) answered, and each
        request and reply carried by the BPF program."""
        c0 = self.carried()
        p = self.guest.run("ip netns exec c1 ping -c %d -i 0.2 -W 3 10.99.0.1" % count, timeout=30)
        carried = self.carried() - c0
        self.last_pings = "ping rc %s, %d of %d carried: %s" % (p.rc, carried, 2 * count, p.stdout.strip()[-200:])
        return p.rc == 0 and carried >= 2 * count

    def wait_pings_carried(self, timeout, what):
        """pings_carried, polled; a timeout says what the last try saw and the guest's state
        (routes, conntrack, the offload, both ends' IKE logs)."""
        try:
            return wait_for(self.pings_carried, timeout, interval=0.5, what=what)
        except TimeoutError as e:
            state = self.guest.run(
                "ip route; ip -4 -br addr; conntrack -L -p udp 2>/dev/null | head -20; "
                "for ns in c1 s1; do echo \"== $ns\"; ip -n $ns xfrm state | grep -E '^src|encap'; "
                "tail -n 15 /tmp/vpnlab/$ns/charon.log; done; tail -n 10 /tmp/vpnlab/c1/pppd.log").stdout
            raise AssertionError("%s\nlast try: %s\noffload: %s\n%s\n%s" % (
                e, self.last_pings, self.offload(), state, self.dump())) from None

    def pppoe_wan_up(self):
        """The router's WAN becomes PPPoE: it dials the ISP namespace's pppoe-server (pt-vpnlab
        pppoe-up), pppoe-wan joins fw4's wan zone and is passthrough's wan_device. Returns what
        pppoe_wan_down needs to undo it."""
        fw = self.sh("uci show firewall")
        zone = re.search(r"^firewall\.(@zone\[\d+\])\.name='wan'$", fw, re.M)
        assert zone, fw
        zone = zone.group(1)
        undo = zone, self.sh("uci get passthrough.global.wan_device").strip()
        try:
            r = self.guest.run("pt-vpnlab pppoe-up", timeout=90)
            assert r.rc == 0 and "203.0.113.101" in r.stdout, r
            self.sh("uci add_list firewall.%s.device='pppoe-wan' && uci commit firewall && fw4 -q reload" % zone)
            self.uci_set(wan_device="pppoe-wan")
            self.sh("reload_config")
        except BaseException:
            self.pppoe_wan_down(undo)
            raise
        return undo

    def pppoe_wan_down(self, undo):
        zone, wan_device = undo
        self.sh("uci -q del_list firewall.%s.device='pppoe-wan'; uci commit firewall; fw4 -q reload" % zone)
        self.uci_set(wan_device=wan_device)
        self.guest.run("passthrough reload")

    def uci_set(self, **options):
        for k, v in options.items():
            self.sh("uci set passthrough.global.%s=%s" % (k, v))
        self.sh("uci commit passthrough")

    def hosts_by_zone(self):
        """LAN host indexes (0, 1) ordered by their conntrack zone, from `passthrough status`."""
        line = self.sh("passthrough status").splitlines()[0]
        pairs = re.findall(r"192\.168\.1\.(\d+)=zone (\d+)", line)
        return [int(h) - 10 for h, z in sorted(pairs, key=lambda p: int(p[1]))]

    def dump(self):
        """Guest state for assertion messages."""
        return self.guest.run("passthrough status; conntrack -L 2>/dev/null | grep -E 'esp|udp' | head -40; "
                              "for m in lan_zone esp_zone esp_out; do nft list map ip passthrough $m; "
                              "done; logread -e passthrough | tail -n 30").stdout

    def log_tail(self, n=40):
        return self.guest.run("logread -e passthrough | tail -n %d; logread | tail -n 20" % n).stdout
