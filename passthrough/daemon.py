"""`passthrough run`: the NFQUEUE consumer. A thin I/O shell around passthrough.engine.

Per queued packet: decode (pure parser) -> engine.handle -> apply kernel ops -> verdict.
Every verdict lets the packet go on: NF_REPEAT with option mark_bit set, so classify runs again
and zones it by what was just learned (nat/nftables.py); policy is enforced by static kernel
rules, so nothing here can drop a VPN by mistake, and any exception is logged and answered the
same way (fail-open forwarding). While it runs, the daemon keeps its heartbeat element in the
kernel (Kernel.alive): without it, classify zones packets by the fallback maps instead of
queueing them.
"""
import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time

from passthrough import config as configmod
from passthrough.engine import Engine
from passthrough.proto.decode import decode_ip
from nat import mapping
from nat import nftables as nftx
from nat.clib import trim_heap
from nat.kernel import Kernel, KernelError

log = logging.getLogger("passthrough")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO, "warning": logging.WARNING,
          "err": logging.ERROR, "error": logging.ERROR}
EXPIRE_EVERY = 1.0
COUNTERS_EVERY = 10.0
QUEUE_BURST = 256  # queued packets handled per turn before the control socket and timers get one


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def set_fail_open(q, queue_num, seq=0x7074):
    """Ask the kernel to accept, not drop, packets that find this queue full (the
    NFQA_CFG_F_FAIL_OPEN flag, Linux >= 3.6). netfilterqueue 1.1 has no call for it and does not
    expose libnetfilter_queue's handle, so the config message is sent on the queue's own netlink
    socket (the kernel accepts queue config only from the socket bound to the queue).
    Returns True (acknowledged), False (refused) or None (no answer seen: packets were first)."""
    attrs = struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack("!I", NFQA_CFG_F_FAIL_OPEN) + \
        struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue_num) + attrs
    msg = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                      NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body
    sock = socket.socket(fileno=os.dup(q.get_fd()))
    try:
        sock.send(msg)
        # The answer shares the socket with queued packets: only take it if it comes first.
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], 0.02)
            if not r:
                continue
            head = sock.recv(65536, socket.MSG_PEEK)
            if len(head) < 20:
                return None
            mlen, mtype, _, mseq, _ = struct.unpack_from("=IHHII", head, 0)
            if mtype != NLMSG_ERROR or mseq != seq:
                return None
            sock.recv(65536)  # consume the ack
            return struct.unpack_from("=i", head, 16)[0] == 0
        return None
    finally:
        sock.close()


class QueueReader:
    """What NetfilterQueue.run_socket() reads from: the queue's netlink socket, but reporting
    "would block" after `burst` messages. NetfilterQueue.run(block=False) loops until the socket
    is empty, which under a flood is never: the control socket and the expiry timer starved
    (measured: no 'stats' answer within 5 s while the queue was flooded)."""

    def __init__(self, q, burst=QUEUE_BURST):
        self.q = q
        self.sock = socket.socket(fileno=os.dup(q.get_fd()))
        self.sock.setblocking(False)
        self.burst = burst
        self.left = 0
        self.enobufs = 0

    def fileno(self):
        return self.sock.fileno()

    def recv(self, size):
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "burst done")
        self.left -= 1
        try:
            return self.sock.recv(size)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                self.enobufs += 1  # the socket overflowed: the kernel dropped queued packets
            raise

    def run(self):
        self.left = self.burst
        self.q.run_socket(self)
        return self.left <= 0  # True: more may be waiting

    def close(self):
        self.sock.close()


class RateLimitedLog:
    """Per-packet log lines are capped (a flood must not flood syslog too); the count of
    suppressed lines is reported once the window passes."""

    def __init__(self, logger, per_second=20):
        self.logger = logger
        self.per_second = per_second
        self.window = 0
        self.count = 0
        self.suppressed = 0

    def __call__(self, level, msg):
        now = int(time.time())
        if now != self.window:
            if self.suppressed:
                self.logger.warning("%d log lines suppressed (rate limit %d/s)", self.suppressed, self.per_second)
            self.window, self.count, self.suppressed = now, 0, 0
        self.count += 1
        if self.count > self.per_second:
            self.suppressed += 1
            return
        self.logger.log(LEVELS.get(level, logging.INFO), "%s", msg)


def setup_logging(level, use_syslog=True):
    root = logging.getLogger("passthrough")
    root.handlers[:] = []
    root.setLevel(LEVELS.get(level, logging.INFO))
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s passthrough[%(process)d] %(levelname)s: %(message)s"))
    root.addHandler(h)
    if use_syslog and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # here: with --no-syslog (procd logs stderr) not loaded
        try:
            s = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
            s.setFormatter(logging.Formatter("passthrough[%(process)d]: %(message)s"))
            root.addHandler(s)
        except OSError:
            pass


def keep_heap():
    """Each libnftables command allocates and frees ~2.1 MB. Where glibc's dynamic thresholds
    put that on the heap's top and trim it again, or mmap it, every queued packet that adds an
    element pays ~500 fresh zeroed pages: +1 ms new-flow latency (strace: 10 brk or one
    mmap/munmap of 2170880 bytes per packet; bench/run.py e2e p50 0.5 -> 1.5-2 ms, in about half
    of the daemon starts). Fixed thresholds keep it on the heap and the heap's top in place,
    for ~2-3 MB more resident memory. musl (OpenWrt) has no such thresholds and ignores them."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 8 << 20)
    except (OSError, AttributeError):
        pass


class Daemon:
    def __init__(self, config_path, control_path=None):
        self.config_path = config_path
        self.cfg = configmod.load(config_path)
        self.control_path = control_path or self.cfg.control_socket
        self.kernel = Kernel(self.cfg)
        self.engine = Engine(self.cfg, RateLimitedLog(log), natt_probe=self._natt_probe)
        self._ct = None  # ctnetlink socket of the NAT-T port lookups, opened on first use
        self.queues = []
        self.ctl = None
        self.running = False
        self.reload_requested = False
        self.lan_ifindex = None
        self.wan_ifindex = None
        self._resolved_at = -1e9
        self.started = time.time()
        self.op_failures = 0
        self.errors = 0
        self.readers = []
        self.fail_open = None
        self.offloader = None
        self.offload_note = "not started"
        self.flowtables = []  # nft flowtables beside ours (fw4's flow offloading): _check_flowtables
        self._flowtables_at = -1e9

    # --- setup / teardown -----------------------------------------------------------------------
    def start(self):
        self.kernel.check_features()
        backend = self.kernel.detect_backend()
        log.info("queue backend: %s (queue %d, %d queue(s))", backend, self.cfg.queue_num, self.cfg.queue_count)
        self._resolve_devices()
        if not self.cfg.enabled:
            self.kernel.backend = backend
            self.kernel.remove()
            log.info("passthrough disabled (option enabled '0'): no rules installed")
        else:
            kept = self.kernel.adopt_or_install(backend)
            if kept:
                self._adopt()
        self._start_offload(at_start=True)
        self._check_flowtables()
        self._bind_queues()
        self.kernel.alive()  # queues bound: packets may be queued from now on
        self._open_control()

    # --- BPF offload (nat/bpf.py) --------------------------------------------------------------------
    def _start_offload(self, at_start=False):
        """Attach the BPF fast path for learned data flows, if wanted and possible. Its map
        starts empty: flows are offloaded again from conntrack, which a restart keeps.
        offload 'bpf' without it stops the daemon only at start; later (a device gone while
        PPPoE reconnects) it is an error in the log and the nft path carries on."""
        self._stop_offload()
        mode = self.cfg.offload
        if mode == "off" or not self.cfg.enabled:
            self.offload_note = "off (option offload '%s', enabled '%d')" % (mode, self.cfg.enabled)
            self._detach_leftover()
            return
        try:
            from nat import bpf
            if self.lan_ifindex is None or self.wan_ifindex is None:
                raise bpf.OffloadError("LAN or WAN device missing")
            self.offloader = bpf.Offloader(self.cfg, self.lan_ifindex, self.wan_ifindex)
        except Exception as e:  # noqa: BLE001 - any failure means: stay on the nft path
            self.offloader = None
            self.offload_note = "unavailable: %s" % e
            if mode == "bpf" and at_start:
                raise KernelError("offload 'bpf': %s" % e)
            log.log(logging.ERROR if mode == "bpf" else logging.INFO,
                    "BPF offload unavailable, data stays on the nft path: %s", e)
            self._detach_leftover()
            return
        self.offload_note = "on"
        self._set_prefilter((self.lan_ifindex, self.wan_ifindex))
        log.info("BPF offload on: %s (ingress of %s, %s%s)", self.offloader.prog.path, self.cfg.lan_device,
                 self.cfg.wan_device, ", a PPP port" if self.offloader.wan_l3 else "")

    def _stop_offload(self, chains=True):
        if self.offloader is not None:
            if chains:
                self._set_prefilter(None)  # before the program that marks packets goes
            try:
                self.offloader.close()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.exception("detaching the BPF offload")
            self.offloader = None

    def _set_prefilter(self, ports):
        """classify's first-rule shortcut relies on the program's marks on these ifindexes
        (nftables.render_fastpath); None: no shortcut."""
        if self.kernel.prefilter == ports:
            return
        self.kernel.prefilter = ports
        if self.cfg.enabled:
            try:
                self.kernel.reload_chains(self.cfg)
            except KernelError as e:
                log.error("setting the classify prefilter to %s: %s", ports, e)

    def _detach_leftover(self):
        """A killed daemon's program would keep carrying flows nobody refreshes: remove it."""
        try:
            from nat import bpf
            for ifindex in (self.lan_ifindex, self.wan_ifindex):
                if ifindex is not None and bpf.detach(ifindex):
                    log.info("removed a BPF offload program left on ifindex %d", ifindex)
        except Exception as e:  # noqa: BLE001 - no libbpf: nothing can have been attached by us
            log.debug("no BPF offload to remove: %s", e)

    def _offload_sync(self, now):
        if self.offloader is None:
            return
        try:
            added, deleted = self.offloader.sync(self.engine.flows.flows.values(), now)
            if added or deleted:
                log.debug("offload: %d entries added, %d deleted", added, deleted)
        except Exception:  # noqa: BLE001 - the nft path carries on without it
            self.errors += 1
            log.exception("BPF offload sync")

    def _resolve_devices(self, quiet=False):
        changed = False
        for attr, name in (("lan_ifindex", self.cfg.lan_device), ("wan_ifindex", self.cfg.wan_device)):
            old = getattr(self, attr)
            try:
                setattr(self, attr, socket.if_nametoindex(name))
            except OSError:
                setattr(self, attr, None)
                if not quiet or old is not None:
                    log.warning("device %s does not exist (yet); its packets are classified by the kernel rules only", name)
            else:
                if quiet and old != getattr(self, attr):
                    log.info("device %s is now ifindex %d (was %s)", name, getattr(self, attr), old)
            changed = changed or old != getattr(self, attr)
        self._resolved_at = self._now()
        if changed and self.offload_note != "not started":
            self._start_offload()  # the old device took our filter with it; keys hold ifindexes

    def _indev_unknown(self):
        """A queued packet came in on an ifindex that is neither LAN nor WAN: the classify rules
        match devices by name, so the device was created or re-created since we resolved it
        (PPPoE reconnect, bridge rebuilt). Resolve again, at most once a second; otherwise
        inbound packets on a new WAN ifindex would be taken for outbound ones."""
        if self._now() - self._resolved_at >= 1.0:
            self._resolve_devices(quiet=True)

    def _adopt(self):
        lan_zone = [(k[0], v) for k, v, _, _ in self.kernel.map_elements(mapping.LAN_ZONE)]
        keyed = []
        for name in (mapping.IKE_ZONE, mapping.ESP_ZONE, mapping.L2TP_ZONE):
            for k, v, _, comment in self.kernel.map_elements(name):
                keyed.append((name, k[0], k[1], v, comment))
        esp_out = [tuple(k) for k, _, _, _ in self.kernel.map_elements(mapping.ESP_OUT)]
        natt_out = [(k[0], k[1], v, c) for k, v, _, c in self.kernel.map_elements(mapping.NATT_OUT) if len(k) == 2]
        natt_in = [(k[0], k[1], v, c) for k, v, _, c in self.kernel.map_elements(mapping.NATT_IN) if len(k) == 2]
        ops, adopted = self.engine.adopt(lan_zone, keyed, esp_out, self._now(), natt_out, natt_in)
        self._apply(ops)
        log.info("adopted %d host zones, %d flows and %d distinct NAT-T ports kept by the kernel from a previous run",
                 len(lan_zone), adopted, self.engine.natt.distinct_in_use())

    def _natt_probe(self, lan, zone, remote):
        """The WAN port conntrack already translates lan:4500 -> remote:4500 to in the host's
        zone (None: no entry). A connection older than the daemon's state keeps its
        translation; the port table must say what it is, or replies to it find no host."""
        port = mapping.NATT_PORT
        try:
            if self._ct is None:
                from nat.ctnetlink import Conntrack
                self._ct = Conntrack()
            e = self._ct.get(17, (lan, remote, port, port), zone)
        except OSError as err:
            log.debug("conntrack lookup for the NAT-T port of %s -> %s: %s", lan, remote, err)
            return None
        if self.offloader is not None:  # a pair offloaded with a port it no longer has
            self.offloader.recheck((zone, 17, lan, port, remote, port), e, self.engine.flows.flows.values())
        return e["reply"][3] if e is not None else None

    def _bind_queues(self):
        from netfilterqueue import NetfilterQueue  # only the daemon needs the C extension

        for i in range(self.cfg.queue_count):
            q = NetfilterQueue()
            try:
                q.bind(self.cfg.queue_num + i, self._on_packet, max_len=4096)
            except OSError as e:
                raise KernelError("cannot bind NFQUEUE %d: %s (another consumer running?)" % (self.cfg.queue_num + i, e))
            self.queues.append(q)
            try:
                ok = set_fail_open(q, self.cfg.queue_num + i)
            except OSError as e:
                ok = False
                log.debug("fail-open flag: %s", e)
            if ok is False:
                log.warning("NFQUEUE %d: kernel refused the fail-open flag; a full queue drops packets",
                            self.cfg.queue_num + i)
            self.fail_open = ok

    def _open_control(self):
        path = self.control_path
        d = os.path.dirname(path)
        if d and not os.path.isdir(d):
            os.makedirs(d, exist_ok=True)
        try:
            os.unlink(path)
        except OSError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o600)
        s.listen(8)
        s.setblocking(False)
        self.ctl = s

    def stop(self, keep_kernel=False):
        """keep_kernel: a start that failed leaves the kernel as it found it (a table kept from
        a crashed run carries established VPNs; another running daemon owns its rules)."""
        if not keep_kernel:
            self.kernel.alive(False)  # nobody to queue to: the fallback maps zone packets now
        for r in self.readers:
            r.close()
        self.readers = []
        for q in self.queues:
            try:
                q.unbind()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        self.queues = []
        # Fast path goes (nothing left to learn it), policy stays: a stopped daemon must not
        # turn a switched-off family back on (fail-closed). `passthrough flush` removes it.
        if not keep_kernel:
            self._stop_offload(chains=False)
            self.kernel.remove(keep_policy=True)
        if self._ct is not None:
            self._ct.close()
            self._ct = None
        if self.ctl is not None:
            self.ctl.close()
            try:
                os.unlink(self.control_path)
            except OSError:
                pass

    # --- packet path ---------------------------------------------------------------------------
    @staticmethod
    def _now():
        return time.monotonic()

    def _on_packet(self, pkt):
        try:
            d = decode_ip(pkt.get_payload())
            indev = pkt.indev
            if indev and indev != self.lan_ifindex and indev != self.wan_ifindex:
                self._indev_unknown()
            if indev and self.wan_ifindex is not None:
                inbound = indev == self.wan_ifindex
            else:
                inbound = indev != self.lan_ifindex if indev else False
            ops = self.engine.handle(d, inbound, self._now())
            if ops:
                self._apply(ops)
        except Exception:  # noqa: BLE001 - one bad packet must never stop the queue
            self.errors += 1
            if self.errors <= 10 or self.errors % 1000 == 0:
                log.exception("error handling a queued packet (#%d); accepted unchanged", self.errors)
        finally:
            try:
                # Again through classify, which now knows what the daemon learned; the mark
                # keeps it out of the queue this time.
                pkt.set_mark(pkt.get_mark() | self.cfg.mark_bit)
                pkt.repeat()
            except Exception:  # noqa: BLE001
                pass

    def _apply(self, ops):
        if ops:
            failed = self.kernel.apply(ops)
            self.op_failures += failed

    # --- control socket ------------------------------------------------------------------------
    def _serve_control(self):
        try:
            conn, _ = self.ctl.accept()
        except OSError:
            return
        try:
            conn.settimeout(2.0)
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            reply = self.control(data.decode(errors="replace").strip())
            conn.sendall((json.dumps(reply, sort_keys=True) + "\n").encode())
        except OSError as e:
            log.debug("control connection: %s", e)
        finally:
            conn.close()

    def control(self, command):
        if command == "status":
            self._refresh_counters()
            rows = self.engine.status(self._now())
            if self.offloader is not None:
                carried = set((f.kind, f.remote_ip, f.key_text()) for f in self.engine.flows.flows.values()
                              if self.offloader.inbound_key(f) is not None)
                for r in rows:
                    r["offloaded"] = (r["kind"], r["remote_ip"], r["key"]) in carried
            return {"ok": True, "flows": rows, "summary": self.summary()}
        if command == "reload":
            return self.reload()
        if command == "stats":
            return {"ok": True, "summary": self.summary()}
        return {"ok": False, "error": "unknown command %r (status, reload, stats)" % command}

    def summary(self):
        return {
            "backend": self.kernel.backend, "queue_num": self.cfg.queue_num, "enabled": self.cfg.enabled,
            "l2tp_passthrough": self.cfg.kind_enabled("l2tp"), "ipsec_passthrough": self.cfg.kind_enabled("ipsec"),
            "pptp_passthrough": self.cfg.kind_enabled("pptp"), "flows": len(self.engine.flows),
            "pending": len(self.engine.pending), "hosts": self.engine.zone_hosts(), "stats": self.engine.stats,
            "errors": self.errors, "op_failures": self.op_failures,
            "queue_overruns": sum(r.enobufs for r in self.readers), "queue_fail_open": self.fail_open, "uptime": round(time.time() - self.started, 1),
            "config": self.config_path, "offload": self._offload_status(),
            "natt_ports": self._natt_status(), "flowtables": self._check_flowtables(max_age=10),
        }

    def _check_flowtables(self, max_age=0):
        """Warn once per change when nft flowtables exist (nat/nftables.flowtable_warning): fw4
        turns software flow offloading on or off with a firewall reload, which the daemon is not
        told of, so this runs at start, at each reload and (at most every max_age s) for status."""
        now = self._now()
        if now - self._flowtables_at < max_age:
            return self.flowtables
        self._flowtables_at = now
        found = self.kernel.flowtables()
        if found is None:  # listing failed: keep what was known
            return self.flowtables
        if found != self.flowtables:
            msg = nftx.flowtable_warning(found)
            if msg:
                log.warning("%s", msg)
            elif self.flowtables:
                log.info("nft flowtables gone: no flowtable bypasses passthrough's zones now")
        self.flowtables = found
        return found

    def _natt_status(self):
        natt = self.engine.natt
        return {"configured": self.cfg.natt_ports, "effective": self.cfg.natt_ports_mode(),
                "distinct_in_use": natt.distinct_in_use(), "pairs": len(natt), "range": natt.range_text(),
                "exhausted": natt.exhausted}

    def _offload_status(self):
        if self.offloader is None:
            return {"active": False, "note": self.offload_note}
        st = self.offloader.status()
        st["active"] = True
        return st

    def reload(self):
        try:
            new = configmod.load(self.config_path)
        except configmod.ConfigError as e:
            log.error("reload refused, keeping the last good config: %s", e)
            return {"ok": False, "error": str(e)}
        old = self.cfg
        t0 = time.time()
        try:
            structural = any(getattr(old, k) != getattr(new, k) for k in (
                "queue_num", "queue_count", "zone_base", "max_hosts", "mark_bit", "queue_backend", "control_socket"))
            self.cfg = new
            self.kernel.cfg = new
            if structural:
                log.warning("queue/zone/socket options changed: restart the service to apply them")
            if self.offloader is not None:
                self.offloader.set_policy(new)  # the BPF path stops carrying switched-off families first
            if not new.enabled:
                self.kernel.remove()
            elif not old.enabled:
                self.kernel.install(self.kernel.backend)
                self.kernel.alive()
            else:
                self.kernel.apply_policy(new)  # policy first: a family switched off is blocked at once
                self.kernel.reload_chains(new)
            ops, off = self.engine.set_config(new)
            self._apply(ops)
            if (new.enabled, new.offload) != (old.enabled, old.offload):
                self._start_offload()
            self._offload_sync(self._now())
            zones = [z for z in self.engine.zones.by_zone]
            cut = {}
            for fam in off:
                cut[fam] = self.kernel.flush_conntrack(fam, zones)
            if off and new.enabled:
                # The kernel-learned fallback would steer a cut tunnel's stale packets back to
                # its host once the family is on again: forget it (outbound traffic re-learns it).
                self.kernel.flush_fallback()
            self._resolve_devices()
            self._check_flowtables()
        except KernelError as e:
            log.error("reload failed while programming the kernel: %s", e)
            return {"ok": False, "error": str(e)}
        ms = (time.time() - t0) * 1000
        trim_heap()  # what the chains' reload freed (after the timing: it is not the reload's work)
        log.info("reloaded %s in %.0f ms%s", self.config_path, ms,
                 "".join("; %s off: %d conntrack entries cut" % (f, cut[f]) for f in cut))
        return {"ok": True, "switched_off": off, "conntrack_deleted": cut, "ms": round(ms, 1)}

    def _refresh_counters(self):
        """Fold the kernel's per-key packet counters (nft maps and BPF entries: packets the
        daemon never sees) into the flows; refresh conntrack entries of offloaded flows."""
        flows = self.engine.flows
        counts = {}
        for name, kinds in ((mapping.IKE_ZONE, ("ike",)), (mapping.ESP_ZONE, ("esp", "natt")),
                            (mapping.L2TP_ZONE, ("l2tp",))):
            for key, _, packets, _ in self.kernel.map_elements(name):
                for kind in kinds:
                    f = flows.get(kind, key[0], key[1])
                    if f is not None:
                        counts[f] = packets
        if self.offloader is not None:
            carried = self.offloader.refresh(flows.flows.values(), self._now())
            for f in flows.flows.values():
                inbound = self.offloader.inbound_key(f)
                if inbound is not None:
                    counts[f] = counts.get(f, 0) + carried.get(inbound, 0)
        for f in counts:
            if counts[f] != f.kernel_packets:
                f.last_seen = self._now()  # traffic the daemon never sees keeps it alive
            f.kernel_packets = counts[f]

    # --- main loop -------------------------------------------------------------------------------
    def run(self):
        self.running = True
        rfd, wfd = os.pipe()
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd)

        def on_term(signum, frame):
            self.running = False

        def on_hup(signum, frame):
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        qfds = {}
        for q in self.queues:
            r = QueueReader(q)
            self.readers.append(r)
            qfds[r.fileno()] = r
        busy = False
        next_expire = self._now() + EXPIRE_EVERY
        next_counters = self._now() + COUNTERS_EVERY
        log.info("running: LAN %s, WAN %s, control %s", self.cfg.lan_device, self.cfg.wan_device, self.control_path)
        trim_heap()  # what start-up (ruleset, BPF object) freed
        while self.running:
            timeout = 0.0 if busy else max(0.0, min(next_expire, next_counters) - self._now())
            try:
                ready, _, _ = select.select(list(qfds) + [self.ctl.fileno(), rfd], [], [], timeout)
            except InterruptedError:
                ready = []
            busy = False
            for fd in ready:
                if fd in qfds:
                    try:
                        busy = qfds[fd].run() or busy
                    except OSError as e:
                        log.warning("NFQUEUE receive: %s", e)
                elif fd == rfd:
                    try:
                        os.read(rfd, 512)
                    except OSError:
                        pass
                elif self.ctl is not None and fd == self.ctl.fileno():
                    self._serve_control()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            now = self._now()
            if now >= next_counters:
                next_counters = now + COUNTERS_EVERY
                try:
                    self._refresh_counters()
                except Exception:  # noqa: BLE001
                    log.exception("reading kernel counters")
            if now >= next_expire:
                next_expire = now + EXPIRE_EVERY
                # A port re-created under its name (PPPoE reconnect) lost the offload program
                # and has a new ifindex: notice it without waiting for one of its packets.
                self._resolve_devices(quiet=True)
                if self.cfg.enabled:
                    self.kernel.alive()
                self._apply(self.engine.expire(now))
                self._offload_sync(now)
        log.info("stopping")


def main(args):
    """Entry for `passthrough run`."""
    setup_logging(args.log_level or "info", use_syslog=not args.no_syslog)
    if os.geteuid() != 0:
        log.error("passthrough run needs root (nftables, NFQUEUE, conntrack)")
        return 1
    try:
        d = Daemon(args.config, args.control)
    except configmod.ConfigError as e:
        log.error("bad configuration: %s", e)
        return 2
    if args.log_level is None:
        setup_logging(d.cfg.log_level, use_syslog=not args.no_syslog)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    keep_heap()
    try:
        d.start()
    except KernelError as e:
        log.error("%s", e)
        d.stop(keep_kernel=True)
        return 3
    try:
        d.run()
    finally:
        d.stop()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
    return 0
