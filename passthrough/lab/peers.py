"""Real VPN peers in network namespaces: strongSwan charon (kernel-libipsec) and xl2tpd.

Importable without root; only starting a peer needs root. Every peer owns a private working
directory (configs, run dir, sockets, logs). Nothing waits with fixed sleeps: waits poll a
condition (socket exists, log line appears, swanctl shows the SA) until a timeout.

strongSwan (5.9.x), see `Charon`:
  * charon runs as ``ip netns exec NS unshare -m sh -c 'mount --bind DIR/run /run && exec env
    STRONGSWAN_CONF=DIR/strongswan.conf /usr/lib/ipsec/charon'``. ``ip netns exec`` already gives
    each command its own (slave) mount namespace; the explicit ``unshare -m`` (private propagation)
    makes that independent of how the namespace is entered. The bind mount lives and dies with
    the charon process: it never shows in the host's mount table and needs no unmount.
    /run is private so that charon.pid of several daemons do not clash.
  * No kernel ESP here: kernel-libipsec does ESP in userspace over a TUN device ``ipsec0``,
    always UDP-encapsulated (port 4500). charon installs routes for the remote traffic
    selectors into table 220 (``ip rule 220: from all lookup 220``) via ipsec0.
  * libipsec refuses a remote TS equal to the IKE peer (``allow_peer_ts = no``), so a
    host-to-host CHILD_SA over the peers' own addresses gets TS_UNACCEPTABLE. Road warriors
    therefore request a virtual IP (``vips = 0.0.0.0``) from a server pool; the client's
    route ``SUBNET dev ipsec0 table 220 src VIP`` then carries pings through the tunnel.
  * With kernel-libipsec both sides send a wrong NAT-D hash on purpose (fake NAT): IKE always
    floats to 4500 after IKE_SA_INIT and the log says "remote host is behind NAT" even without
    NAT. The real NAT signal is the client's "local host is behind NAT" (``NAT_HERE_RE``).

xl2tpd (1.3.x), see `Xl2tpd`:
  * ``xl2tpd -D -c CONF -s SECRETS -p PID -C CONTROL``, logs to stderr (captured to a file).
  * The control tunnel and the call come up. The real pppd then fails ("You need to create the
    /dev/ppp device node") and xl2tpd closes the call (CDN); the tunnel stays, HELLO after 60 s
    idle (fixed in xl2tpd). By default a pppd stand-in is bind-mounted over /usr/sbin/pppd in
    xl2tpd's private mount namespace: the call stays up and PPP frames travel as L2TP data.
  * One UDP socket bound to ``[global] port``: an xl2tpd LNS always answers from that port.
    See `lns_port_rewrite` to make it answer a LAC that sent to 1701 from another port.

`Capture` wraps tcpdump (classic pcap, -s 0) in a namespace.
"""
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

CHARON = "/usr/lib/ipsec/charon"
CHARON_PLUGIN_DIR = "/usr/lib/ipsec/plugins"
SWANCTL = "swanctl"
XL2TPD = "xl2tpd"

#: Plugins loaded by charon (load_modular = no). Enough for PSK with IKEv1/IKEv2.
CHARON_PLUGINS = ("random nonce openssl pem pkcs1 x509 pubkey sha1 sha2 hmac aes gcm kdf "
                  "curve25519 xcbc cmac attr kernel-libipsec kernel-netlink socket-default vici updown")

#: Default algorithms (pinned so captures are stable and small).
IKE_PROPOSALS = "aes128-sha256-x25519"
ESP_PROPOSALS = "aes128gcm16"
#: strongswan.conf line (Charon(extra_conf=...)) that allows IKEv1 aggressive mode with PSK.
AGGRESSIVE_PSK_CONF = "  i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n"

# Log lines (strongSwan 5.9.8, xl2tpd 1.3.18) used for detection.
NAT_HERE_RE = r"local host is behind NAT"
NAT_REMOTE_RE = r"remote host is behind NAT"
CHILD_UP_RE = r"CHILD_SA (\S+)\{\d+\} established with SPIs (\w+)_i (\w+)_o"
L2TP_LISTEN_RE = r"Listening on IP address (\S+), port (\d+)"
# "Connection established to 203.0.113.2, 1701.  Local: 25098, Remote: 65498 (ref=0/0)."
L2TP_TUNNEL_RE = r"Connection established to ([\d.]+), (\d+)\.\s+Local: (\d+), Remote: (\d+)"
# LAC: "Call established with 203.0.113.2, Local: 8374, Remote: 35211, Serial: 1 (ref=0/0)"
# LNS: "Call established with 203.0.113.10, PID: 5309, Local: 35211, Remote: 8374, Serial: 1"
L2TP_CALL_RE = r"Call established with ([\d.]+), (?:PID: \d+, )?Local: (\d+), Remote: (\d+)"
L2TP_HELLO_RE = r"message type 6 \(Hello\)"


class PeerError(RuntimeError):
    """A peer failed to start or to do what was asked; the message carries the log tail."""


# ----------------------------------------------------------------------------------------------
# small helpers

def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def ns_argv(ns, argv):
    """argv prefixed with `ip netns exec NS` (unchanged when ns is None: host namespace)."""
    return (["ip", "netns", "exec", ns] if ns else []) + list(argv)


def run(argv, ns=None, check=True, timeout=30, input=None):
    """Run argv (in ns), return CompletedProcess with text output; raise PeerError on failure."""
    p = subprocess.run(ns_argv(ns, argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise PeerError("%s failed (%d): %s" % (" ".join(ns_argv(ns, argv)), p.returncode,
                                                 (p.stderr + p.stdout).strip()))
    return p


def _descendants(pid):
    """PIDs of all live descendants of pid (via /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (p, t)) as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def _stop_process(proc, timeout=5.0, sig=signal.SIGTERM):
    """Signal a Popen (by pid), wait, SIGKILL after timeout; also kill leftover descendants."""
    if proc is None:
        return
    kids = _descendants(proc.pid) if proc.poll() is None else []
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
    for k in kids:  # e.g. pppd started by xl2tpd; they were ours
        try:
            os.kill(k, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def gone():
        for k in kids:
            try:
                with open("/proc/%d/stat" % k) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                        return False
            except (OSError, IndexError):
                pass
        return True
    try:
        wait_for(gone, 2.0, interval=0.02, what="children gone")
    except TimeoutError:
        pass


class _Daemon:
    """Common parts: private workdir, log file, log waits, stop."""

    def __init__(self, ns, workdir, name):
        self.ns = ns
        self.name = name
        self._own_workdir = workdir is None
        self.workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="pt-peer-%s-" % name))
        os.makedirs(self.workdir, exist_ok=True)
        self.proc = None
        self.log_path = os.path.join(self.workdir, name + ".log")

    def _path(self, *parts):
        return os.path.join(self.workdir, *parts)

    def log_text(self):
        """Whole log of the daemon so far ('' if none)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Wait until regex `pattern` matches the log (from char offset `start`); return the match."""
        rx = re.compile(pattern)

        def check():
            self._check_alive()
            return rx.search(self.log_text(), start)
        try:
            return wait_for(check, timeout, what="%r in %s" % (pattern, self.log_path))
        except TimeoutError as e:
            raise PeerError("%s: %s\n--- log tail ---\n%s" % (self.name, e, self.log_tail()))

    def log_has(self, pattern):
        """True if regex `pattern` occurs in the log."""
        return re.search(pattern, self.log_text()) is not None

    def _check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise PeerError("%s exited with %s\n--- log tail ---\n%s"
                            % (self.name, self.proc.returncode, self.log_tail()))

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _spawn(self, argv):
        out = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(ns_argv(self.ns, argv), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            out.close()

    def stop(self, timeout=5.0):
        """SIGTERM by pid, SIGKILL after timeout; remove the workdir if we created it
        (kept when the environment has PT_PEERS_KEEP=1, for debugging)."""
        _stop_process(self.proc, timeout)
        if self._own_workdir and os.environ.get("PT_PEERS_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)



# ----------------------------------------------------------------------------------------------
# strongSwan

def _block(name, body, indent=1):
    pad = "  " * indent
    return "%s%s {\n%s%s}\n" % (pad, name, body, pad)


def _kv(d, indent):
    pad = "  " * indent
    return "".join("%s%s = %s\n" % (pad, k, v) for k, v in d.items() if v is not None)


def gateway_conf(local_ip, subnet="192.168.77.0/24", psk="pt-secret", version=2, name="gw",
                 child="net", pool="192.168.78.0/24", encap=False, dpd_delay=None,
                 proposals=IKE_PROPOSALS, esp_proposals=ESP_PROPOSALS, local_id=None,
                 aggressive=False):
    """swanctl.conf text of a PSK gateway: accepts any peer, hands out virtual IPs from `pool`,
    CHILD_SA `child` with local_ts=`subnet` (remote_ts = the client's virtual IP).
    IKEv1 aggressive mode with PSK also needs, in both charons, extra_conf
    "i_dont_care_about_security_and_use_aggressive_mode_psk = yes" (see AGGRESSIVE_PSK_CONF)."""
    conn = {"version": version, "local_addrs": local_ip, "proposals": proposals,
            "pools": "pool-" + name if pool else None, "encap": "yes" if encap else None,
            "dpd_delay": dpd_delay, "aggressive": "yes" if aggressive else None}
    child_kv = {"local_ts": subnet, "esp_proposals": esp_proposals}
    body = (_kv(conn, 2)
            + _block("local", _kv({"auth": "psk", "id": local_id or local_ip}, 3), 2)
            + _block("remote", _kv({"auth": "psk"}, 3), 2)
            + _block("children", _block(child, _kv(child_kv, 4), 3), 2))
    text = "connections {\n" + _block(name, body) + "}\n"
    text += "secrets {\n" + _block("ike-" + name, _kv({"secret": '"%s"' % psk}, 2)) + "}\n"
    if pool:
        text += "pools {\n" + _block("pool-" + name, _kv({"addrs": pool}, 2)) + "}\n"
    return text


def roadwarrior_conf(local_ip, remote_ip, psk="pt-secret", version=2, name="rw", child="net",
                     remote_ts="192.168.77.0/24", local_ts=None, vip=True, encap=False,
                     dpd_delay=None, proposals=IKE_PROPOSALS, esp_proposals=ESP_PROPOSALS,
                     local_id=None, remote_id=None, aggressive=False, childless=None, mobike=True):
    """swanctl.conf text of a PSK road-warrior client: IKE `name`, CHILD_SA `child` to
    `remote_ts`; with vip=True asks the gateway for a virtual IP (needed with kernel-libipsec).
    encap=True forces UDP encapsulation (fake NAT-D -> IKE_AUTH already on 4500).
    local_id defaults to local_ip (keep it unique per client behind one NAT).
    mobike=False keeps IKEv2 on UDP 500 when there is no NAT (with MOBIKE strongSwan always
    moves to 4500 at IKE_AUTH); with kernel-libipsec it moves anyway (fake NAT-D)."""
    conn = {"version": version, "local_addrs": local_ip, "remote_addrs": remote_ip,
            "proposals": proposals, "vips": "0.0.0.0" if vip else None,
            "encap": "yes" if encap else None, "dpd_delay": dpd_delay,
            "aggressive": "yes" if aggressive else None, "childless": childless,
            "mobike": None if mobike else "no"}
    child_kv = {"remote_ts": remote_ts, "local_ts": local_ts, "esp_proposals": esp_proposals}
    body = (_kv(conn, 2)
            + _block("local", _kv({"auth": "psk", "id": local_id or local_ip}, 3), 2)
            + _block("remote", _kv({"auth": "psk", "id": remote_id or remote_ip}, 3), 2)
            + _block("children", _block(child, _kv(child_kv, 4), 3), 2))
    text = "connections {\n" + _block(name, body) + "}\n"
    text += "secrets {\n" + _block("ike-" + name, _kv({"secret": '"%s"' % psk}, 2)) + "}\n"
    return text


def parse_swanctl_pretty(text):
    """Parse `swanctl ... --pretty` output into a list of (message-name, dict) pairs.

    Sections become dicts, lists become Python lists, key = value pairs strings."""
    messages, stack = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not stack:
            m = re.match(r"^(.*\S)\s*\{$", line)
            if m:
                d = {}
                messages.append((m.group(1), d))
                stack.append(d)
            continue
        top = stack[-1]
        if line == "}" or line == "]":
            stack.pop()
        elif line.endswith("{"):
            d = {}
            top[line[:-1].strip()] = d
            stack.append(d)
        elif line.endswith("= ["):
            lst = []
            top[line[:-3].strip()] = lst
            stack.append(lst)
        elif isinstance(top, list):
            top.append(line)
        else:
            k, sep, v = line.partition(" = ")
            if sep:
                top[k.strip()] = v
            elif line.endswith("{}"):  # empty section on one line
                top[line[:-2].strip()] = {}
    return messages


class _Peer:
    """What Charon and Xl2tpd share: a supervised process (`self._d`, a _Daemon) and its log."""

    @property
    def pid(self):
        return self._d.pid

    @property
    def running(self):
        return self._d.running

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        """The peer's log so far (charon: its file log; xl2tpd: its stderr/stdout with debug)."""
        return self._d.log_text()

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Wait until regex `pattern` appears in the log; return the match."""
        return self._d.wait_log(pattern, timeout, start)

    def log_has(self, pattern):
        return self._d.log_has(pattern)


class Charon(_Peer):
    """strongSwan charon (kernel-libipsec) in namespace `ns` with its own config/vici/log in workdir.

    c = Charon("pt-x-client", None, "client").start()
    c.load(roadwarrior_conf("192.168.1.10", "203.0.113.2"))
    c.initiate("net", "rw"); c.wait_child_up("net")
    replies, pkts_in, pkts_out = ping_through_tunnel(c, "192.168.77.1")
    c.stop()

    workdir=None: a temp dir, removed by stop(). Files there: strongswan.conf, NAME.log (charon's
    file log: ike 2, cfg/knl/net/enc 1, with ms timestamps and <conn|id> prefix), NAME.stdout,
    run/ (bind-mounted over /run), swanctl/swanctl.conf (last load()), charon.vici.
    keep_alive: NAT-T keepalive interval in s (charon default 20 s; sent only by a side that is
    itself behind NAT). libipsec=False: no kernel-libipsec (IKE only; no CHILD_SA can be
    installed here). extra_conf: lines inserted into the charon { } section.
    """

    def __init__(self, ns, workdir=None, name="charon", keep_alive=None, libipsec=True,
                 log_levels=None, extra_conf="", plugins=None):
        self._d = _Daemon(ns, workdir, name)
        self.ns, self.name, self.workdir = ns, name, self._d.workdir
        self.run_dir = self._d._path("run")
        self.vici_path = self._d._path("charon.vici")
        self._vici_dir = None
        if len(self.vici_path) > 100:  # sun_path holds 108 bytes
            self._vici_dir = tempfile.mkdtemp(prefix="pt-vici-")
            self.vici_path = os.path.join(self._vici_dir, "charon.vici")
        self.uri = "unix://" + self.vici_path
        self.conf_path = self._d._path("strongswan.conf")
        self.log_path = self._d.log_path
        self.swanctl_dir = self._d._path("swanctl")
        levels = {"default": 1, "ike": 2, "cfg": 1, "knl": 1, "net": 1, "enc": 1}
        levels.update(log_levels or {})
        plugins = plugins or CHARON_PLUGINS
        if not libipsec:  # for captures of IKE that stays on UDP 500 (no CHILD_SA possible here)
            plugins = " ".join(p for p in plugins.split() if p != "kernel-libipsec")
        self.libipsec = libipsec
        self.conf_text = (
            "charon {\n"
            "  load_modular = no\n"
            "  load = %s\n"
            "  install_virtual_ip = yes\n"
            "  install_routes = yes\n"
            "%s"
            "  plugins {\n"
            "    vici {\n      socket = %s\n    }\n"
            "  }\n"
            "  filelog {\n"
            "    ptlog {\n"
            "      path = %s\n"
            "      time_format = %%H:%%M:%%S\n      time_add_ms = yes\n"
            "      ike_name = yes\n      flush_line = yes\n      append = no\n"
            "%s"
            "    }\n"
            "  }\n"
            "  syslog {\n  }\n"
            "%s"
            "}\n" % (plugins, "  keep_alive = %ss\n" % keep_alive if keep_alive else "", self.uri,
                     self.log_path, "".join("      %s = %s\n" % kv for kv in levels.items()), extra_conf))

    # -- lifecycle
    def start(self, timeout=10.0):
        """Write strongswan.conf, start charon, wait for the vici socket. Returns self."""
        self._check_plugins()
        os.makedirs(self.run_dir, exist_ok=True)
        for sub in ("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private",
                    "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12"):
            os.makedirs(os.path.join(self.swanctl_dir, sub), exist_ok=True)
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text)
        for stale in (self.vici_path, os.path.join(self.run_dir, "charon.pid")):
            if os.path.exists(stale):
                os.unlink(stale)
        script = "mount --bind %s /run && exec env STRONGSWAN_CONF=%s %s" % (
            shlex.quote(self.run_dir), shlex.quote(self.conf_path), CHARON)
        out = open(self._d._path(self.name + ".stdout"), "wb")
        try:
            self._d.proc = subprocess.Popen(
                ns_argv(self.ns, ["unshare", "-m", "--propagation", "private", "sh", "-c", script]),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            out.close()

        def ready():
            self._d._check_alive()
            return os.path.exists(self.vici_path)
        try:
            wait_for(ready, timeout, what="vici socket %s" % self.vici_path)
        except (TimeoutError, PeerError):
            self.stop()
            raise
        return self

    def _check_plugins(self):
        """Every plugin we load must be installed: a missing one (e.g. openssl, which Debian ships in
        libstrongswan-standard-plugins, a mere Recommends) fails later as NO_PROPOSAL_CHOSEN."""
        conf = self.conf_text.split("load = ", 1)[1].split("\n", 1)[0]
        missing = [p for p in conf.split()
                   if not os.path.exists(os.path.join(CHARON_PLUGIN_DIR, "libstrongswan-%s.so" % p))]
        if missing:
            raise PeerError("%s: strongSwan plugin(s) not installed: %s (Debian: libstrongswan-standard-plugins, "
                            "libstrongswan-extra-plugins, libcharon-extra-plugins; run scripts/setup.sh)"
                            % (self.name, " ".join(missing)))

    def stop(self, timeout=5.0):
        """SIGTERM charon by pid (SIGKILL after timeout); the private /run mount dies with it."""
        self._d.stop(timeout)
        if self._vici_dir:
            shutil.rmtree(self._vici_dir, ignore_errors=True)

    # -- swanctl
    def swanctl(self, *args, timeout=30, check=True):
        """Run `swanctl ARGS --uri unix://...` (from the host; the socket is a file). Returns stdout."""
        argv = [SWANCTL] + list(args) + ["--uri", self.uri]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise PeerError("%s: %s failed (%d): %s\n--- log tail ---\n%s" % (
                self.name, " ".join(argv), p.returncode, (p.stderr + p.stdout).strip()[-2000:],
                self._d.log_tail()))
        return p.stdout

    def load(self, conf_text):
        """Write conf_text to workdir/swanctl/swanctl.conf and `swanctl --load-all --file` it."""
        path = os.path.join(self.swanctl_dir, "swanctl.conf")
        with open(path, "w") as f:
            f.write(conf_text)
        return self.swanctl("--load-all", "--file", path)

    def initiate(self, child=None, ike=None, timeout=10):
        """`swanctl --initiate` (blocks until established or failed; raises PeerError on failure)."""
        args = ["--initiate", "--timeout", str(int(timeout))]
        if child:
            args += ["--child", child]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout + 5)

    def terminate(self, ike=None, child=None, timeout=10, force=False):
        """`swanctl --terminate` an IKE_SA (sends DELETE) or a CHILD_SA."""
        args = ["--terminate", "--timeout", str(int(timeout))]
        if child:
            args += ["--child", child]
        if ike:
            args += ["--ike", ike]
        if force:
            args += ["--force"]
        return self.swanctl(*args, timeout=timeout + 5)

    def list_sas(self):
        """IKE_SAs as a list of dicts (swanctl --list-sas --pretty), each with 'name' added:
        keys like state, version, local-host, local-port, remote-host, remote-port, initiator-spi,
        responder-spi, nat-local/nat-remote/nat-fake/nat-any ('yes' when set), local-vips,
        'child-sas': {uniq: {name, state, protocol, encap, spi-in, spi-out, bytes-in, packets-in,
        local-ts, remote-ts, ...}}."""
        out = self.swanctl("--list-sas", "--pretty")
        sas = []
        for msg, body in parse_swanctl_pretty(out):
            if msg != "list-sa event":
                continue
            for ike_name, sa in body.items():
                sa = dict(sa)
                sa["name"] = ike_name
                sa.setdefault("child-sas", {})
                sas.append(sa)
        return sas

    def children(self, name=None):
        """All CHILD_SAs (optionally those named `name`) as dicts with 'ike' (the IKE_SA dict)."""
        res = []
        for sa in self.list_sas():
            for child in sa["child-sas"].values():
                if name is None or child.get("name") == name:
                    c = dict(child)
                    c["ike"] = sa
                    res.append(c)
        return res

    def wait_ike_up(self, ike=None, timeout=10.0):
        """Wait until an IKE_SA (named `ike`, or any) is ESTABLISHED; return its dict."""
        def check():
            self._d._check_alive()
            for sa in self.list_sas():
                if (ike is None or sa["name"] == ike) and sa.get("state") == "ESTABLISHED":
                    return sa
        return self._wait(check, timeout, "IKE_SA %s ESTABLISHED" % ike)

    def wait_child_up(self, name=None, timeout=10.0):
        """Wait until a CHILD_SA (named `name`, or any) is INSTALLED; return it (with 'ike')."""
        def check():
            self._d._check_alive()
            for c in self.children(name):
                if c.get("state") == "INSTALLED":
                    return c
        return self._wait(check, timeout, "CHILD_SA %s INSTALLED" % name)

    def wait_no_sas(self, timeout=10.0):
        """Wait until no IKE_SA is left (e.g. after terminate / peer's DELETE)."""
        return self._wait(lambda: not self.list_sas() or None, timeout, "no IKE_SAs") or True

    def _wait(self, check, timeout, what):
        try:
            return wait_for(check, timeout, interval=0.05, what=what)
        except TimeoutError as e:
            raise PeerError("%s: %s\n--- log tail ---\n%s" % (self.name, e, self._d.log_tail()))

    def wait_tunnel_route(self, dst, timeout=10.0, dev="ipsec0"):
        """Wait until `ip route get dst` in our namespace goes via the libipsec TUN device.
        charon reports the CHILD_SA INSTALLED slightly before it has added the route
        (table 220), so wait for this before sending traffic. Returns the route line."""
        def check():
            p = run(["ip", "route", "get", dst], ns=self.ns, check=False)
            return p.stdout.strip() if (" dev %s " % dev) in p.stdout + " " else None
        try:
            return self._wait(check, timeout, "route to %s via %s" % (dst, dev))
        except PeerError as e:
            diag = run(["sh", "-c", "ip route get %s; ip rule; ip route show table all; ip -br addr"
                        % dst], ns=self.ns, check=False)
            raise PeerError("%s\n--- routing in %s ---\n%s%s" % (e, self.ns, diag.stdout, diag.stderr))

    def nat_here(self):
        """True if this charon saw its own side behind NAT ("local host is behind NAT").
        Only meaningful on the client: libipsec fakes the peer-side NAT-D on purpose."""
        return self.log_has(NAT_HERE_RE)


def add_address(ns, cidr, dev="lo"):
    """Add an address to a device in ns (e.g. the gateway's protected subnet on lo)."""
    run(["ip", "addr", "add", cidr, "dev", dev], ns=ns)


_PING_PY = r"""
import os, select, socket, struct, sys, time
def cks(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
dst, n, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
if len(sys.argv) > 4: s.bind((sys.argv[4], 0))
ident = os.getpid() & 0xffff; got = 0
for seq in range(n):
    data = b'passthrough-ping' * 4
    pkt = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + data
    s.sendto(struct.pack('!BBHHH', 8, 0, cks(pkt), ident, seq) + data, (dst, 0))
    end = time.monotonic() + wait
    while True:
        r, _, _ = select.select([s], [], [], max(0, end - time.monotonic()))
        if not r: break
        p, a = s.recvfrom(4096); ihl = (p[0] & 15) * 4
        t, c, _, i, q = struct.unpack('!BBHHH', p[ihl:ihl + 8])
        if t == 0 and i == ident and q == seq and a[0] == dst: got += 1; break
print(got)
"""


def ping(ns, dst, count=3, wait=1.0, src=None):
    """ICMP echo from namespace ns (raw socket in python3: no `ping` binary needed).
    Returns the number of replies; waits at most `wait` s per request."""
    argv = ["python3", "-c", _PING_PY, dst, str(count), str(wait)] + ([src] if src else [])
    p = run(argv, ns=ns, timeout=count * wait + 10)
    return int(p.stdout.strip() or 0)


def ping_through_tunnel(charon, dst, count=3, wait=1.0):
    """Ping dst (an address inside the CHILD_SA's remote_ts) from charon's namespace and check
    that it went through the tunnel: returns (replies, packets-in delta, packets-out delta)
    summed over this charon's CHILD_SAs. The kernel routes dst via ipsec0 (table 220)."""
    def counters():
        i = o = 0
        for c in charon.children():
            i += int(c.get("packets-in", 0))
            o += int(c.get("packets-out", 0))
        return i, o
    charon.wait_tunnel_route(dst)
    i0, o0 = counters()
    got = ping(charon.ns, dst, count, wait)
    i1, o1 = counters()
    return got, i1 - i0, o1 - o0


# ----------------------------------------------------------------------------------------------
# xl2tpd

# Stand-in for /usr/sbin/pppd (there is no /dev/ppp here, the real pppd exits at once and
# xl2tpd then closes the call with CDN). xl2tpd runs "pppd TTY passive nodetach ... file OPTS";
# the stub opens TTY (the pty whose other end xl2tpd reads), sends an async-HDLC framed LCP
# Configure-Request every INTERVAL s (0: once, None: never) -- xl2tpd turns each into an L2TP data message --
# and counts the PPP frames it receives from the peer in LOG ("rx N" lines).
_PPPD_STUB = r"""#!/usr/bin/python3
import os, select, sys, time, tty
INTERVAL = %(interval)r
LOG = %(log)r
def fcs16(data):
    fcs = 0xffff
    for b in data:
        fcs ^= b
        for _ in range(8):
            fcs = (fcs >> 1) ^ 0x8408 if fcs & 1 else fcs >> 1
    return fcs ^ 0xffff
def frame(payload):
    f = payload + fcs16(payload).to_bytes(2, "little")
    out = bytearray(b"\x7e")
    for b in f:
        if b < 0x20 or b in (0x7d, 0x7e):
            out += bytes((0x7d, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out + b"\x7e")
def lcp_confreq(ident):
    opts = bytes((5, 6)) + (0x50540000 + os.getpid() %% 65536).to_bytes(4, "big")  # Magic-Number
    return b"\xff\x03\xc0\x21" + bytes((1, ident & 255)) + (4 + len(opts)).to_bytes(2, "big") + opts
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
log = open(LOG, "a", buffering=1)
log.write("start %%d %%s\n" %% (os.getpid(), " ".join(sys.argv[1:])))
ident, rx, buf, nxt = 1, 0, b"", (None if INTERVAL is None else 0.0)
while True:
    now = time.monotonic()
    if nxt is not None and now >= nxt:
        os.write(fd, frame(lcp_confreq(ident)))
        log.write("tx %%d\n" %% ident)
        ident += 1
        nxt = now + INTERVAL if INTERVAL else None
    r, _, _ = select.select([fd], [], [], 0.5 if nxt is None else max(0.0, nxt - now))
    if r:
        data = os.read(fd, 4096)
        if not data:
            break
        buf += data
        while buf.count(b"\x7e") >= 2:
            start = buf.index(b"\x7e")
            end = buf.index(b"\x7e", start + 1)
            if end > start + 1:
                rx += 1
                log.write("rx %%d\n" %% rx)
            buf = buf[end:]
"""


class Xl2tpd(_Peer):
    """xl2tpd as LAC or LNS in namespace `ns`; config, secrets, pid, control pipe, log in workdir.

    LNS: Xl2tpd(ns, None, "lns", role="lns", listen_addr="203.0.113.2")
    LAC: Xl2tpd(ns, None, "lac", role="lac", lns_addr="203.0.113.2") -> autodials at start;
         .tunnel_up() -> {'peer', 'port', 'local', 'remote'} (our/peer tunnel id).
    `port` is the local UDP port (global `port =`, default 1701); `lns_port` the LAC's
    destination port (written as `lns = ADDR:PORT` when not 1701).

    pppd="stub" (default): xl2tpd runs in a private mount namespace where /usr/sbin/pppd is
    bind-mounted over by a small stand-in (see _PPPD_STUB): the call stays up, and every
    `ppp_interval` s (0: once, None: never) it sends an LCP Configure-Request that travels as an L2TP data
    message; `ppp_rx()` / `ppp_tx()` count PPP frames received from / sent to the peer. pppd="real": the real
    pppd fails without /dev/ppp and xl2tpd closes the call (CDN); the tunnel stays.
    """

    def __init__(self, ns, workdir=None, name="xl2tpd", role="lac", lns_addr=None, lns_port=1701,
                 listen_addr=None, port=1701, lac_name="pt", autodial=True, debug=True,
                 ip_range="192.168.79.10-192.168.79.20", local_ip="192.168.79.1",
                 extra_global="", extra_section="", pppd="stub", ppp_interval=1.0):
        if pppd not in ("stub", "real"):
            raise ValueError("pppd must be 'stub' or 'real'")
        if role not in ("lac", "lns"):
            raise ValueError("role must be 'lac' or 'lns'")
        if role == "lac" and not lns_addr:
            raise ValueError("a LAC needs lns_addr")
        self._d = _Daemon(ns, workdir, name)
        self.ns, self.name, self.role, self.workdir = ns, name, role, self._d.workdir
        self.lac_name = lac_name
        self.conf_path = self._d._path("xl2tpd.conf")
        self.secrets_path = self._d._path("l2tp-secrets")
        self.pid_path = self._d._path("xl2tpd.pid")
        self.control_path = self._d._path("l2tp-control")
        self.ppp_options_path = self._d._path("ppp-options")
        self.log_path = self._d.log_path
        self.pppd = pppd
        self.pppd_stub_path = self._d._path("pppd-stub")
        self.pppd_stub_log = self._d._path("pppd-stub.log")
        self.ppp_interval = ppp_interval
        g = ["[global]", "port = %d" % port, "auth file = %s" % self.secrets_path]
        if listen_addr:
            g.append("listen-addr = %s" % listen_addr)
        if debug:
            g += ["debug tunnel = yes", "debug state = yes", "debug network = yes", "debug avp = yes"]
        if extra_global:
            g.append(extra_global.strip())
        common = ["require authentication = no", "pppoptfile = %s" % self.ppp_options_path,
                  "length bit = yes"]
        if role == "lns":
            s = ["[lns default]", "ip range = %s" % ip_range, "local ip = %s" % local_ip,
                 "refuse pap = yes", "refuse chap = yes"] + common
        else:
            lns = lns_addr if lns_port == 1701 else "%s:%d" % (lns_addr, lns_port)
            s = ["[lac %s]" % lac_name, "lns = %s" % lns, "autodial = %s" % ("yes" if autodial else "no"),
                 "redial = no"] + common
        if extra_section:
            s.append(extra_section.strip())
        self.conf_text = "\n".join(g + s) + "\n"

    def start(self, timeout=10.0):
        """Write configs, start `xl2tpd -D`, wait for "Listening on IP address ...". Returns self."""
        with open(self.conf_path, "w") as f:
            f.write(self.conf_text)
        with open(self.ppp_options_path, "w") as f:
            f.write("noauth\nnodetach\n")
        fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        for stale in (self.pid_path, self.control_path):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = [XL2TPD, "-D", "-c", self.conf_path, "-s", self.secrets_path,
                "-p", self.pid_path, "-C", self.control_path]
        if self.pppd == "stub":
            with open(self.pppd_stub_path, "w") as f:
                interval = None if self.ppp_interval is None else float(self.ppp_interval)
                f.write(_PPPD_STUB % {"interval": interval, "log": self.pppd_stub_log})
            os.chmod(self.pppd_stub_path, 0o755)
            if os.path.exists(self.pppd_stub_log):
                os.unlink(self.pppd_stub_log)
            # private mount namespace: the bind mount is seen by xl2tpd and its children only
            argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /usr/sbin/pppd && exec "$@"', self.pppd_stub_path] + argv
        self._d._spawn(argv)
        try:
            self.wait_log(L2TP_LISTEN_RE, timeout)
            wait_for(lambda: os.path.exists(self.control_path), timeout, what="control pipe")
        except (TimeoutError, PeerError):
            self.stop()
            raise
        return self

    def stop(self, timeout=5.0):
        """SIGTERM xl2tpd by pid (SIGKILL after timeout), kill leftover pppd children."""
        self._d.stop(timeout)

    def control(self, line):
        """Write one command to the control pipe (e.g. 'c pt' connect, 'd pt' disconnect)."""
        fd = os.open(self.control_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
        finally:
            os.close(fd)

    def connect(self):
        """LAC: dial (tunnel + call) via the control pipe (needed with autodial=False)."""
        self.control("c %s" % self.lac_name)

    def disconnect(self):
        """LAC: tear the tunnel down (sends StopCCN)."""
        self.control("d %s" % self.lac_name)

    def tunnel_up(self, timeout=10.0, start=0):
        """Wait for "Connection established to ADDR, PORT.  Local: X, Remote: Y"; returns
        {'peer': ADDR, 'port': PORT, 'local': X, 'remote': Y} (tunnel ids, ints)."""
        m = self.wait_log(L2TP_TUNNEL_RE, timeout, start)
        return {"peer": m.group(1), "port": int(m.group(2)), "local": int(m.group(3)),
                "remote": int(m.group(4))}

    def call_up(self, timeout=10.0, start=0):
        """Wait for "Call established with ADDR, ... Local: X, Remote: Y" (session ids)."""
        m = self.wait_log(L2TP_CALL_RE, timeout, start)
        return {"peer": m.group(1), "local": int(m.group(2)), "remote": int(m.group(3))}

    def _stub_frames(self, direction):
        try:
            with open(self.pppd_stub_log) as f:
                return sum(1 for line in f if line.startswith(direction + " "))
        except OSError:
            return 0

    def ppp_rx(self):
        """pppd="stub": number of PPP frames the stub got from the peer through the tunnel."""
        return self._stub_frames("rx")

    def ppp_tx(self):
        """pppd="stub": number of PPP frames the stub(s) sent so far."""
        return self._stub_frames("tx")

    def wait_ppp_rx(self, n=1, timeout=10.0):
        """pppd="stub": wait until the stub received n PPP frames (L2TP data path works)."""
        try:
            return wait_for(lambda: self.ppp_rx() >= n or None, timeout,
                            what="%d PPP frames at %s" % (n, self.name))
        except TimeoutError as e:
            raise PeerError("%s: %s\n--- log tail ---\n%s" % (self.name, e, self._d.log_tail()))

    def tunnel_ids(self):
        """All (local, remote) tunnel id pairs established so far, from the log."""
        return [(int(m.group(3)), int(m.group(4))) for m in re.finditer(L2TP_TUNNEL_RE, self.log_text())]


def lns_port_rewrite(ns, listen_port, table="pt_peers_l2tp"):
    """Make an LNS bound to `listen_port` answer a LAC that sent to 1701 (RFC 2661 section 8.1):
    stateless rewrite of incoming UDP dport 1701 -> listen_port in ns (nft, prerouting at raw
    priority, before conntrack). Replies leave from listen_port, not 1701.
    The UDP checksum is zeroed: `udp dport set` alone produced UdpInCsumErrors on veth here."""
    rules = ("table ip %s {\n  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n"
             "    udp dport 1701 udp dport set %d udp checksum set 0\n  }\n}\n" % (table, listen_port))
    run(["nft", "-f", "-"], ns=ns, input=rules)


# ----------------------------------------------------------------------------------------------
# capture

class Capture:
    """tcpdump -s 0 -U -w PATH (classic pcap) on `iface` in ns; stop() flushes and returns path."""

    def __init__(self, ns, iface, path, bpf=None):
        self.ns, self.iface, self.path, self.bpf = ns, iface, os.path.abspath(path), bpf
        self.proc = None
        self.err_path = self.path + ".tcpdump.log"

    def start(self, timeout=10.0):
        err = open(self.err_path, "wb")
        argv = ["tcpdump", "-i", self.iface, "-s", "0", "-U", "--immediate-mode", "-n", "-Z", "root", "-w", self.path]
        if self.bpf:
            argv += self.bpf.split()
        try:
            self.proc = subprocess.Popen(ns_argv(self.ns, argv), stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()

        def ready():
            if self.proc.poll() is not None:
                raise PeerError("tcpdump exited: %s" % open(self.err_path).read())
            with open(self.err_path) as f:
                return "listening on" in f.read()
        wait_for(ready, timeout, what="tcpdump listening")
        return self

    def settle(self, quiet=0.3, timeout=3.0):
        """Wait until the pcap has not grown for `quiet` seconds (packets still in flight)."""
        last = [-1, time.monotonic()]

        def check():
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            now = time.monotonic()
            if size != last[0]:
                last[:] = [size, now]
            return now - last[1] >= quiet
        try:
            wait_for(check, timeout, interval=0.05, what="capture quiet")
        except TimeoutError:
            pass  # steady traffic: nothing more to wait for

    def stop(self, timeout=5.0, settle=0.3):
        """Let in-flight packets arrive (`settle`), SIGINT tcpdump (it writes out what it has)
        and wait; returns the pcap path."""
        if settle and self.proc is not None and self.proc.poll() is None:
            self.settle(settle)
        _stop_process(self.proc, timeout, sig=signal.SIGINT)
        if os.path.exists(self.err_path):
            os.unlink(self.err_path)
        return self.path

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ----------------------------------------------------------------------------------------------
# minimal two-namespace setup for direct (no NAT) tests and reference captures.
# The real lab topology (LAN hosts, NAT router, server) is passthrough.lab.topology.

class _DirectPair:
    """Two namespaces `PREFIX-c` (client) and `PREFIX-s` (server) joined by one veth pair
    (`wan0` in both), client 203.0.113.10/24, server 203.0.113.2/24, tx checksum offload off,
    IPv6 disabled."""

    CLIENT_IP = "203.0.113.10"
    SERVER_IP = "203.0.113.2"
    IFACE = "wan0"

    def __init__(self, prefix=None):
        prefix = prefix or "pt-pr-%d" % os.getpid()
        self.client, self.server = prefix + "-c", prefix + "-s"

    def up(self):
        self.down()
        try:
            for ns in (self.client, self.server):
                run(["ip", "netns", "add", ns])
                # no IPv6: link-local DAD ~2 s after start would make charon roam (MOBIKE
                # address updates = extra INFORMATIONAL exchanges at random moments)
                run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], ns=ns)
                run(["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"], ns=ns)
            run(["ip", "link", "add", self.IFACE, "netns", self.client, "type", "veth",
                 "peer", "name", self.IFACE, "netns", self.server])
            for ns, ip in ((self.client, self.CLIENT_IP), (self.server, self.SERVER_IP)):
                run(["ip", "addr", "add", ip + "/24", "dev", self.IFACE], ns=ns)
                run(["ip", "link", "set", "lo", "up"], ns=ns)
                run(["ip", "link", "set", self.IFACE, "up"], ns=ns)
                run(["ethtool", "-K", self.IFACE, "tx", "off"], ns=ns)
        except Exception:
            self.down()
            raise
        return self

    def down(self):
        have = run(["ip", "netns", "list"]).stdout.split()
        for ns in (self.client, self.server):
            if ns in have:
                run(["ip", "netns", "del", ns], check=False)

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc):
        self.down()
