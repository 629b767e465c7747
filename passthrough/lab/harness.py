"""Drives a lab: the passthrough daemon in the router namespace, the scripted responder in the
WAN namespace and scapy clients in the LAN namespaces. Used by `passthrough lab` and the tests.
"""
import json
import os
import signal
import subprocess
import sys
import time

from passthrough.cli import ask
from passthrough.lab.peers import wait_for
from passthrough.lab.topology import Lab, nsexec, run

LAB_ROOT = "/run/passthrough-lab"


class LabRun:
    """One lab with its daemon; everything it starts is recorded by PID and ended by PID."""

    def __init__(self, prefix="pt-", hosts=2, workdir=None):
        self.lab = Lab(prefix, hosts=hosts, servers=2)
        self.workdir = workdir or os.path.join(LAB_ROOT, prefix.rstrip("-") or "lab")
        self.config_path = os.path.join(self.workdir, "passthrough")
        self.control = os.path.join(self.workdir, "control.sock")
        self.daemon_log = os.path.join(self.workdir, "daemon.log")
        self.pidfile = os.path.join(self.workdir, "daemon.pid")
        self.daemon = None
        self.responders = []
        self.options = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def up(self, start_daemon=True, responders=True, **options):
        """Build the lab. responders=False leaves the WAN namespace free for real peers
        (strongSwan, xl2tpd) that need ports 500/4500/1701 themselves."""
        os.makedirs(self.workdir, exist_ok=True)
        self.lab.up()
        if responders:
            # Two server addresses: .2 answers L2TP from 1701, .3 from 1702 (RFC 2661 §8.1).
            self.start_responder(self.lab.server_ip(0), 1701)
            self.start_responder(self.lab.server_ip(1), 1702)
        self.write_config(**options)
        if start_daemon:
            self.start_daemon()
        return self

    def down(self):
        self.stop_daemon()
        for p in self.responders:
            _end(p)
        self.responders = []
        _end_pidfile(self.pidfile)
        self.lab.down()
        for name in ("passthrough", "control.sock", "daemon.pid"):
            try:
                os.unlink(os.path.join(self.workdir, name))
            except OSError:
                pass

    def peer_log(self, ip):
        return os.path.join(self.workdir, "responder-%s.peers" % ip)

    def server_peers(self, ip, service):
        """{(address, port)} the responder on ip saw on its UDP port `service` so far."""
        out = set()
        try:
            with open(self.peer_log(ip)) as f:
                for line in f:
                    e = json.loads(line)
                    if e["service"] == service:
                        out.add((e["peer"], e["port"]))
        except OSError:
            pass
        return out

    def start_responder(self, ip, l2tp_port):
        ready = os.path.join(self.workdir, "responder-%s.ready" % ip)
        for path in (ready, self.peer_log(ip)):
            try:
                os.unlink(path)
            except OSError:
                pass
        p = subprocess.Popen(["ip", "netns", "exec", self.lab.server, sys.executable, "-m", "passthrough.lab.responder",
                              "--bind", ip, "--l2tp-reply-port", str(l2tp_port), "--ready-file", ready,
                              "--peer-log", self.peer_log(ip)],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.workdir, "responder.log"), "a"))
        self.responders.append(p)
        wait_for(lambda: os.path.exists(ready) or p.poll() is not None, 20, what="responder on %s" % ip)
        if p.poll() is not None:
            raise RuntimeError("responder on %s exited (%s)" % (ip, p.returncode))

    # --- config ----------------------------------------------------------------------------------
    def write_config(self, **options):
        base = {
            "enabled": "1", "l2tp_passthrough": "1", "ipsec_passthrough": "1", "pptp_passthrough": "1",
            "lan_device": self.lab.lan_device, "wan_device": self.lab.wan_device,
            "control_socket": self.control, "log_level": "info",
        }
        self.options.update(base if not self.options else {})
        self.options.update(options)
        lines = ["# written by the passthrough lab", "config passthrough 'global'"]
        for k in sorted(self.options):
            lines.append("\toption %s '%s'" % (k, self.options[k]))
        with open(self.config_path + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(self.config_path + ".tmp", self.config_path)

    def set_options(self, **options):
        """Change options (like `uci set` + commit) and reload the daemon; returns its reply."""
        self.write_config(**options)
        return self.reload()

    def reload(self):
        return ask(self.control, "reload")

    def status(self):
        return ask(self.control, "status")

    # --- daemon ----------------------------------------------------------------------------------
    def start_daemon(self, timeout=20):
        log = open(self.daemon_log, "a")
        self.daemon = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.router, sys.executable, "-m", "passthrough.cli", "run",
             "--config", self.config_path, "--pidfile", self.pidfile, "--no-syslog"],
            stdout=log, stderr=log, start_new_session=True)

        def ready():
            if self.daemon.poll() is not None:
                raise RuntimeError("daemon exited with %s:\n%s" % (self.daemon.returncode, self.log_tail()))
            try:
                return ask(self.control, "stats", timeout=1.0).get("ok")
            except (OSError, ValueError):
                return False

        wait_for(ready, timeout, what="daemon control socket")
        return self.daemon

    def stop_daemon(self, sig=signal.SIGTERM):
        if self.daemon is None:
            return None
        _end(self.daemon, sig)
        rc = self.daemon.returncode
        self.daemon = None
        return rc

    def kill_daemon(self):
        """SIGKILL: no cleanup runs, the kernel keeps every rule and map (the fault case)."""
        return self.stop_daemon(signal.SIGKILL)

    def wait_heartbeat_gone(self, timeout=10.0):
        """After a kill: wait until the daemon's heartbeat element (set `alive`) has timed out,
        i.e. classify zones by the fallback maps instead of queueing to nobody."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = subprocess.run(["ip", "netns", "exec", self.lab.router, "nft", "list", "set", "ip", "passthrough",
                                "alive"], capture_output=True, text=True)
            if p.returncode == 0 and "elements" not in p.stdout:
                return True
            time.sleep(0.2)
        raise AssertionError("heartbeat element still there %.0f s after the kill" % timeout)

    def log_tail(self, n=30):
        try:
            with open(self.daemon_log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # --- traffic -----------------------------------------------------------------------------------
    def client_argv(self, host, kind, *args):
        return ["ip", "netns", "exec", self.lab.lan_hosts[host], sys.executable, "-m", "passthrough.lab.client",
                kind] + [str(a) for a in args]

    def client(self, host, kind, *args, timeout=60):
        """Run a client to completion; return its summary dict."""
        p = run(self.client_argv(host, kind, *args), timeout=timeout)
        return json.loads(p.stdout.strip().splitlines()[-1])["summary"]

    def clients(self, kind, per_host_args, timeout=60):
        """Run one client per LAN host at the same time; return their summaries in host order."""
        procs = [subprocess.Popen(self.client_argv(h, kind, *args), stdout=subprocess.PIPE, text=True)
                 for h, args in enumerate(per_host_args)]
        out = []
        for p in procs:
            stdout, _ = p.communicate(timeout=timeout)
            lines = stdout.strip().splitlines()
            out.append(json.loads(lines[-1])["summary"] if lines else {"error": "no output", "replies": 0})
        return out

    def client_stream(self, host, kind, *args):
        """Start a verbose client; the caller reads its JSON lines (one per reply)."""
        return subprocess.Popen(self.client_argv(host, kind, "-v", *args), stdout=subprocess.PIPE, text=True)

    def conntrack(self):
        return nsexec(self.lab.router, "conntrack", "-L", check=False).stdout

    def nft(self, *args, check=True):
        return nsexec(self.lab.router, "nft", *args, check=check).stdout


def _end(proc, sig=signal.SIGTERM, timeout=5.0):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig) if _own_group(proc) else proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)  # a stopped process (fault tests) must see the signal
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _own_group(proc):
    try:
        return os.getpgid(proc.pid) == proc.pid
    except OSError:
        return False


def _end_pidfile(path):
    """A daemon left by an earlier `lab up` (other process): end it by its recorded PID."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), 5, what="daemon %d to exit" % pid)
    except (OSError, ValueError, TimeoutError):
        pass
