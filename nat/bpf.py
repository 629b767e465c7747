"""BPF offload, the I/O shell: loads nat/bpf/offload.o with libbpf (ctypes; no bpftool, no tc
binary), attaches its program to the ingress of the LAN and WAN ports (tcx on kernels 6.6 and
later, the clsact qdisc's cls_bpf before them), keeps the flow map
in step with nat/offload.py's plan, reading translations from conntrack and keeping the entries of
carried flows alive (both over ctnetlink, nat/ctnetlink.py).

Why tcx first: the clsact hook costs every forwarded packet, VPN or not, about 4-5 % here even
with a program that only returns (the qdisc layer and cls_bpf's walk), tcx about 1-2 %
(bench/README.md, "other traffic").

Needs a kernel with tcx (6.6+) or tc BPF (cls_bpf, clsact; OpenWrt: kmod-sched-bpf), bpf_fib_lookup (4.18+),
libbpf >= 0.6, an Ethernet LAN port and an Ethernet or PPP (PPPoE) WAN port (a redirect to PPP
that takes the Ethernet header off: kernels with PPP as L3 in dev_is_mac_header_xmit, 6.3 and
the stable 6.1 / 5.15 series). Without them the daemon stays on the nft path (option
offload 'auto') or refuses to start (offload 'bpf').
"""
import ctypes
import errno
import logging
import os
import sys
import time

from nat import offload as plan
from nat.clib import load_library
from nat.ctnetlink import Conntrack

log = logging.getLogger("passthrough.bpf")

# Where the object is looked for: the OpenWrt package installs it to /usr/lib/passthrough, a
# source checkout builds it next to its source (make -C nat/bpf).
OBJECT_PATHS = ("/usr/lib/passthrough/offload.o",
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "offload.o"))
TC_HANDLE = 0x7074   # "pt": how our filters are told from others on the same hook
TC_PRIORITY = 1      # first; returns TC_ACT_UNSPEC for what it does not carry, so later filters run
BPF_TC_INGRESS = 1
BPF_TC_F_REPLACE = 1
BPF_TCX_INGRESS = 46  # enum bpf_attach_type, kernel 6.6 (not in Debian 12's headers)
BPF_F_REPLACE = 1 << 2
PROG_NAMES = ("offload", "offload_l3")  # ours on a tcx hook are told from others' by name
BPF_ANY = 0
LOOKUPS_PER_SYNC = 32  # pairs looked up in conntrack per sync: many pending flows cost seconds, not CPU
ARPHRD_ETHER = 1
ARPHRD_PPP = 512


class OffloadError(RuntimeError):
    pass


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32)]


class _AttachOpts(ctypes.Structure):  # struct bpf_prog_attach_opts as libbpf 0.8-1.2 had it
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("replace_prog_fd", ctypes.c_int)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32)]


def _libbpf():
    try:
        lib = load_library("libbpf.so.1", "bpf", use_errno=True)
    except OSError as e:
        raise OffloadError("libbpf not found (%s): install libbpf1 (OpenWrt: libbpf)" % e)
    vp, ci, cvp = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
    sig = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (ci, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (ci, [vp]),
        "bpf_map__fd": (ci, [vp]),
        "bpf_map_update_elem": (ci, [ci, cvp, cvp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (ci, [ci, cvp, cvp]),
        "bpf_map_delete_elem": (ci, [ci, cvp]),
        "bpf_map_get_next_key": (ci, [ci, cvp, cvp]),
        "bpf_tc_hook_create": (ci, [ctypes.POINTER(_TcHook)]),
        "bpf_tc_attach": (ci, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
        "bpf_tc_detach": (ci, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
        "bpf_tc_query": (ci, [ctypes.POINTER(_TcHook), ctypes.POINTER(_TcOpts)]),
        "libbpf_num_possible_cpus": (ci, []),
        "libbpf_set_print": (vp, [vp]),
    }
    u32p = ctypes.POINTER(ctypes.c_uint32)
    tcx = {  # the tcx hook: without them (libbpf < 0.8) only clsact
        "bpf_prog_attach_opts": (ci, [ci, ci, ci, ctypes.POINTER(_AttachOpts)]),
        "bpf_prog_detach2": (ci, [ci, ci, ci]),
        "bpf_prog_query": (ci, [ci, ci, ctypes.c_uint32, u32p, u32p, u32p]),
        "bpf_prog_get_fd_by_id": (ci, [ctypes.c_uint32]),
        "bpf_obj_get_info_by_fd": (ci, [ci, vp, u32p]),
    }
    for fn in list(sig) + list(tcx):
        try:
            f = getattr(lib, fn)
        except AttributeError:
            if fn in tcx:
                lib.has_tcx = False
                continue
            raise OffloadError("libbpf lacks %s (need libbpf >= 0.6)" % fn)
        f.restype, f.argtypes = sig.get(fn) or tcx[fn]
    lib.has_tcx = getattr(lib, "has_tcx", True)
    if not log.isEnabledFor(logging.DEBUG):
        # libbpf prints to stderr (the verifier's log when the kernel refuses the program:
        # wanted with log_level 'debug'; "no such qdisc" when looking for ours); otherwise its
        # errors are reported here, once
        lib.libbpf_set_print(None)
    return lib


def _u32(n):
    return n.to_bytes(4, sys.byteorder)  # array keys and values: host order


def _err(rc):
    """libbpf returns -errno (or NULL with errno set)."""
    n = -rc if rc and rc < 0 else ctypes.get_errno()
    return "%s (errno %d)" % (os.strerror(n), n)


def find_object():
    """$PASSTHROUGH_BPF_OBJECT if set (and only it), else the first of OBJECT_PATHS."""
    env = os.environ.get("PASSTHROUGH_BPF_OBJECT")
    paths = (env,) if env else OBJECT_PATHS
    for path in paths:
        if os.path.isfile(path):
            return path
    raise OffloadError("BPF object not found (looked in %s; build it: make -C nat/bpf)" % ", ".join(paths))


def device_type(name):
    """The device's ARPHRD_* type (None: no such device)."""
    try:
        with open("/sys/class/net/%s/type" % name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def device_is_ethernet(name):
    return device_type(name) == ARPHRD_ETHER


class Map:
    def __init__(self, lib, fd, key_size, val_size):
        self.lib, self.fd, self.key_size, self.val_size = lib, fd, key_size, val_size

    def update(self, key, val, flags=BPF_ANY):
        rc = self.lib.bpf_map_update_elem(self.fd, key, val, flags)
        if rc:
            raise OffloadError("BPF map update: %s" % _err(rc))

    def delete(self, key):
        return self.lib.bpf_map_delete_elem(self.fd, key) == 0

    def lookup(self, key):
        buf = ctypes.create_string_buffer(self.val_size)
        if self.lib.bpf_map_lookup_elem(self.fd, key, buf):
            return None
        return buf.raw

    def keys(self):
        out = []
        cur = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while self.lib.bpf_map_get_next_key(self.fd, cur, nxt) == 0:
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)
        return out

    def items(self):
        out = {}
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                out[k] = v
        return out


class OffloadProgram:
    """The loaded object and its tc attachments."""

    def __init__(self, path=None):
        self.lib = _libbpf()
        self.path = path or find_object()
        self.obj = self.lib.bpf_object__open_file(self.path.encode(), None)
        if not self.obj:
            raise OffloadError("cannot open %s: %s" % (self.path, _err(0)))
        rc = self.lib.bpf_object__load(self.obj)
        if rc:
            self.close()
            raise OffloadError("kernel refused the BPF programs of %s: %s" % (self.path, _err(rc)))
        self.ncpu = max(1, self.lib.libbpf_num_possible_cpus())
        self.flows = self._map("offload_flows", plan.KEY_SIZE, plan.VAL_SIZE)
        self.policy = self._map("offload_policy", 4, 4)
        self.stats = self._map("offload_stats", 4, 8 * self.ncpu)
        self.hooks = {}  # ifindex -> "tcx" or "tc": where the program is attached

    def _map(self, name, ks, vs):
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if not m:
            raise OffloadError("%s has no map %s" % (self.path, name))
        return Map(self.lib, self.lib.bpf_map__fd(m), ks, vs)

    def attach(self, ifindex, prog_name):
        """On the port's tcx ingress, else (kernel before 6.6) as a clsact filter. A program
        left there by a killed daemon is replaced in one step (no gap); a clsact filter of an
        older version goes once the tcx one runs. Returns the hook: "tcx" or "tc"."""
        prog = self.lib.bpf_object__find_program_by_name(self.obj, prog_name.encode())
        if not prog:
            raise OffloadError("%s has no program %s" % (self.path, prog_name))
        fd = self.lib.bpf_program__fd(prog)
        hook = "tcx" if _tcx_attach(self.lib, ifindex, fd) else "tc"
        if hook == "tcx":
            _tc_detach(self.lib, ifindex)
        else:
            _tc_attach(self.lib, ifindex, fd)
        self.hooks[ifindex] = hook
        return hook

    def detach_all(self):
        for ifindex in self.hooks:
            detach(ifindex, self.lib)
        self.hooks = {}

    def set_policy(self, bits):
        self.policy.update(_u32(0), _u32(bits))

    def set_candidate_mark(self, bit):
        """The mark bit the program sets on packets that may be VPN and go on to the stack."""
        self.policy.update(_u32(1), _u32(bit))

    def stat_counts(self):
        out = {}
        for i, name in enumerate(plan.STATS):
            raw = self.stats.lookup(_u32(i)) or b""
            out[name] = sum(int.from_bytes(raw[j:j + 8], sys.byteorder) for j in range(0, len(raw), 8))
        return out

    def close(self):
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None


def _tc_hook_opts(ifindex, prog_fd=0, flags=0):
    """Our filter's place: tc ingress of the port, our handle and priority."""
    hook = _TcHook(ctypes.sizeof(_TcHook), ifindex, BPF_TC_INGRESS, 0)
    opts = _TcOpts(ctypes.sizeof(_TcOpts), prog_fd, flags, 0, TC_HANDLE, TC_PRIORITY)
    return hook, opts


def _tc_attach(lib, ifindex, fd):
    hook, opts = _tc_hook_opts(ifindex, fd, BPF_TC_F_REPLACE)
    rc = lib.bpf_tc_hook_create(ctypes.byref(hook))
    if rc and rc != -errno.EEXIST:  # another tool's clsact is fine: we share it
        raise OffloadError("tc clsact on ifindex %d: %s" % (ifindex, _err(rc)))
    # REPLACE: a program left by a killed daemon is swapped atomically, no gap.
    rc = lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts))
    if rc:
        raise OffloadError("tc BPF filter on ifindex %d: %s" % (ifindex, _err(rc)))


def _tc_detach(lib, ifindex):
    hook, opts = _tc_hook_opts(ifindex)
    return lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts)) == 0


def _tc_ours(lib, ifindex):
    hook, opts = _tc_hook_opts(ifindex)
    if lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)) == 0 and opts.prog_id:
        return [opts.prog_id]
    return []


def _prog_name(lib, fd):
    info = (ctypes.c_uint8 * 256)()  # struct bpf_prog_info: name[16] at offset 64
    n = ctypes.c_uint32(len(info))
    if lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(n)):
        return None
    return bytes(info[64:80]).split(b"\0")[0].decode(errors="replace")


def _tcx_ours(lib, ifindex):
    """[(prog id, fd)] of our programs on the port's tcx ingress (fds: the caller closes)."""
    if not lib.has_tcx:
        return []
    ids = (ctypes.c_uint32 * 64)()
    cnt, flags = ctypes.c_uint32(len(ids)), ctypes.c_uint32(0)
    if lib.bpf_prog_query(ifindex, BPF_TCX_INGRESS, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)):
        return []  # no tcx in this kernel (EINVAL), or nothing there
    out = []
    for pid in ids[:min(cnt.value, len(ids))]:
        fd = lib.bpf_prog_get_fd_by_id(pid)
        if fd < 0:
            continue
        if _prog_name(lib, fd) in PROG_NAMES:
            out.append((pid, fd))
        else:
            os.close(fd)
    return out


def _tcx_attach(lib, ifindex, fd):
    """True if the program now runs on the port's tcx ingress; False: no tcx here (kernel
    before 6.6, libbpf before 0.8), use clsact."""
    if not lib.has_tcx:
        return False
    ours = _tcx_ours(lib, ifindex)
    try:
        old = [f for pid, f in ours]
        opts = _AttachOpts(ctypes.sizeof(_AttachOpts), BPF_F_REPLACE if old else 0, old[0] if old else 0)
        rc = lib.bpf_prog_attach_opts(fd, ifindex, BPF_TCX_INGRESS, ctypes.byref(opts))
        if rc == -errno.EEXIST:  # this very program is there already
            rc = 0
        if rc:
            if old:  # tcx works here, so this is a real error
                raise OffloadError("tcx ingress of ifindex %d: %s" % (ifindex, _err(rc)))
            log.debug("no tcx on ifindex %d (%s): clsact", ifindex, _err(rc))
            return False
        for f in old[1:]:  # more than one of ours (should not be): keep one
            lib.bpf_prog_detach2(f, ifindex, BPF_TCX_INGRESS)
        return True
    finally:
        for pid, f in ours:
            os.close(f)


def attached(ifindex, lib=None):
    """Our programs on a port: [{"hook": "tcx"|"tc", "id": prog id}] (tests, status)."""
    lib = lib or _libbpf()
    out = []
    for pid, fd in _tcx_ours(lib, ifindex):
        os.close(fd)
        out.append({"hook": "tcx", "id": pid})
    out.extend({"hook": "tc", "id": pid} for pid in _tc_ours(lib, ifindex))
    return out


def detach(ifindex, lib=None):
    """Remove our programs from a port, tcx and clsact (whoever loaded them). True if one was there."""
    lib = lib or _libbpf()
    found = False
    for pid, fd in _tcx_ours(lib, ifindex):
        found = lib.bpf_prog_detach2(fd, ifindex, BPF_TCX_INGRESS) == 0 or found
        os.close(fd)
    return _tc_detach(lib, ifindex) or found


def _log_back_to_stack(pair):
    log.info("conntrack entry of %s <-> %s (zone %d) is gone or made again: back to the stack, "
             "offloaded again from the entry there now", pair[2], pair[4], pair[0])


class Offloader:
    """Keeps the flow map in step with the engine's flows and conntrack (see nat/offload.py)."""

    def __init__(self, cfg, lan_if, wan_if, program=None):
        if not device_is_ethernet(cfg.lan_device):
            raise OffloadError("%s is not an Ethernet device (tunnel, missing): the program writes "
                               "the Ethernet headers of the LAN side" % cfg.lan_device)
        wan_type = device_type(cfg.wan_device)
        if wan_type not in (ARPHRD_ETHER, ARPHRD_PPP):
            raise OffloadError("%s is neither Ethernet nor PPP (a tunnel, missing)" % cfg.wan_device)
        self.wan_l3 = wan_type == ARPHRD_PPP  # PPPoE WAN: no MAC header there
        self.cfg = cfg
        self.plan = plan.OffloadPlan(lan_if, wan_if, wan_l3=self.wan_l3)
        self.installed = {}  # key -> value config (counters stripped)
        self.lan_if, self.wan_if = lan_if, wan_if
        self.errors = 0
        self._warn_after = 0.0
        self.refreshed = 0
        self.ct = Conntrack()
        try:
            self.prog = program or OffloadProgram()
        except Exception:
            self.ct.close()
            raise
        try:
            self.set_policy(cfg)
            self.prog.set_candidate_mark(cfg.steer_mark_bit)
            self.prog.attach(wan_if, "offload_l3" if self.wan_l3 else "offload")
            self.prog.attach(lan_if, "offload")
        except Exception:
            self.close()  # no half-attached program: one port with it, one without
            raise

    def set_policy(self, cfg):
        """Families switched off stop being carried at once (their packets meet the policy
        drops in the stack), before their entries are deleted."""
        self.cfg = cfg
        self.prog.set_policy(plan.policy_bits(cfg))

    def close(self):
        self.prog.detach_all()
        self.prog.close()
        self.ct.close()

    # --- sync ---------------------------------------------------------------------------------------
    def sync(self, flows, now):
        """Offload what conntrack has accepted, drop what is gone. Returns (added, deleted)."""
        flows = list(flows)
        pairs = self.plan.pending(flows, now)[:LOOKUPS_PER_SYNC]
        entries = []
        for pair in pairs:
            for proto, tup, reply in plan.lookups(pair):
                try:
                    e = self.ct.get(proto, tup, pair[0], reply)
                except OSError as err:
                    self.errors += 1
                    log.warning("conntrack lookup of %s <-> %s (zone %d): %s", pair[2], pair[4], pair[0], err)
                    break
                if e is not None:
                    entries.append(e)
                    if e["replied"]:
                        break
        for pair in self.plan.learn(pairs, entries, now):
            t = self.plan.trans[pair]
            log.info("offloading %s %s:%d <-> %s:%d (zone %d) as %s:%d", "udp" if pair[1] == 17 else "esp",
                     pair[2], pair[3], pair[4], pair[5], pair[0], t[0], t[1])
        return self._install(self.plan.desired(flows))

    def _install(self, want):
        dels, adds = plan.diff(self.installed, want)
        for k in dels:
            self.prog.flows.delete(k)
            self.installed.pop(k, None)
        for k, v in adds:
            try:
                self.prog.flows.update(k, v)
            except OffloadError as e:
                # Map full (max_flows above its 16384 entries) or out of memory: the flow stays
                # on the nft path; said once a minute, not once a second.
                self.errors += 1
                if time.monotonic() >= self._warn_after:
                    self._warn_after = time.monotonic() + 60.0
                    log.warning("%s: flows beyond it stay on the nft path (%d failures so far)", e, self.errors)
                continue
            self.installed[k] = plan.val_config(v)
        return len(adds), len(dels)

    def recheck(self, pair, entry, flows):
        """The daemon has just read the pair's conntrack entry (None: gone): a translation it no
        longer has stops being carried now, not at the next refresh."""
        if self.plan.check(pair, entry):
            _log_back_to_stack(pair)
            self._install(self.plan.desired(flows))

    def inbound_key(self, flow):
        """The key of a flow's inbound entry (None while not offloaded)."""
        pair = plan.flow_pair(flow)
        t = self.plan.trans.get(pair) if pair is not None else None
        if t is None:
            return None
        return self.plan.entries(flow, pair, t)[1][0]

    def counters(self):
        """{key: packets} of the installed entries."""
        out = {}
        for k in self.installed:
            raw = self.prog.flows.lookup(k)
            if raw is not None:
                out[k] = plan.val_counters(raw)[0]
        return out

    def refresh(self, flows, now):
        """Refresh conntrack entries of pairs that carried packets; a pair whose entry is gone
        (flushed, expired while idle) goes back to the stack. Returns {key: packets}."""
        flows = list(flows)
        counts = self.counters()
        gone = False
        due = set(self.plan.refresh_due(flows, counts))
        for pair in list(self.plan.trans):
            proto, orig = self.plan.trans[pair][2]
            try:
                # The entry must still be the one the translation was read from (one made again
                # under the same tuple may translate to another port). Idle pairs are looked at
                # too: their entries time out as usual, and one gone sends the pair back now, so
                # the flow's next packet makes its entry through the stack instead of being
                # carried on a translation nobody holds any more. Only carried pairs are refreshed.
                there = not self.plan.check(pair, self.ct.get(proto, orig, pair[0]))
                if there and pair in due:
                    there = self.ct.set_timeout(proto, orig, pair[0], self.cfg.udp_timeout)
                    if not there:
                        self.plan.forget(pair)
            except OSError as e:
                self.errors += 1
                log.warning("%s conntrack entry %s <-> %s (zone %d): %s", "refreshing" if pair in due else "looking up",
                            pair[2], pair[4], pair[0], e)
                continue
            if not there:
                _log_back_to_stack(pair)
                gone = True
            elif pair in due:
                self.refreshed += 1
        if gone:
            self._install(self.plan.desired(flows))
        return counts

    def status(self):
        return {"entries": len(self.installed), "pairs": len(self.plan.trans), "conntrack_refreshed": self.refreshed,
                "errors": self.errors, "program": self.prog.stat_counts(), "object": self.prog.path,
                "hooks": dict((str(i), h) for i, h in sorted(self.prog.hooks.items()))}
