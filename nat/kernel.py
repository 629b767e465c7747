"""Kernel programming: nftables (libnftables in-process, `nft` CLI as fallback), the xt NFQUEUE
rule on kernels without nft_queue, element ops and the daemon's heartbeat element (both over
netlink, nat/nftnetlink.py, with the libnftables text as fallback), and conntrack teardown.
The thin I/O shell around nat/nftables.py; nothing here decides policy.
"""
import ctypes
import json
import logging
import os
import subprocess

from passthrough.compat import which
from nat import nftables as nftx
from nat.clib import load_library
from nat import nftnetlink

log = logging.getLogger("passthrough.kernel")


class KernelError(RuntimeError):
    pass


class Nft:
    """Runs nft command text. libnftables keeps per-element updates well under a millisecond."""

    def __init__(self, use_lib=True):
        self._ctx = None
        self._lib = None
        if use_lib:
            try:
                lib = load_library("libnftables.so.1", "nftables")
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                ctx = lib.nft_ctx_new(0)
                lib.nft_ctx_buffer_output(ctx)
                lib.nft_ctx_buffer_error(ctx)
                self._lib, self._ctx = lib, ctx
            except (OSError, AttributeError) as e:
                log.debug("libnftables unavailable (%s); using the nft command", e)
        if self._ctx is None and not which("nft"):
            raise KernelError("neither libnftables nor the nft command is available (install nftables)")

    def run(self, text, json_out=False):
        """Run commands; return (ok, stdout, stderr)."""
        if self._ctx is not None:
            self._lib.nft_ctx_output_set_flags(self._ctx, 1 << 4 if json_out else 0)  # NFT_CTX_OUTPUT_JSON
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            return rc == 0, out, err
        cmd = ["nft"] + (["-j"] if json_out else []) + ["-f", "-"]
        p = subprocess.run(cmd, input=text, capture_output=True, text=True)
        return p.returncode == 0, p.stdout, p.stderr

    def check(self, text, what):
        ok, out, err = self.run(text)
        if not ok:
            raise KernelError("%s: %s" % (what, err.strip()))
        return out

    def list_json(self, what):
        ok, out, err = self.run("list " + what, json_out=True)
        if not ok:
            return None
        try:
            return json.loads(out)["nftables"]
        except (ValueError, KeyError):
            return None


def _iptables():
    for name in ("iptables", "iptables-nft", "iptables-legacy"):
        if which(name):
            return name
    return None


def iptables_queue_spec(cfg):
    """The NFQUEUE rule of versions before the one-hook layout (iptables' raw PREROUTING,
    queueing packets classify marked): only deleted now, when an upgrade finds it."""
    if cfg.queue_count > 1:
        target = ["--queue-balance", "%d:%d" % (cfg.queue_num, cfg.queue_num + cfg.queue_count - 1)]
    else:
        target = ["--queue-num", str(cfg.queue_num)]
    return ["-t", "raw", "PREROUTING", "-m", "mark", "--mark", "0x%x/0x%x" % (cfg.mark_bit, cfg.mark_bit),
            "-m", "comment", "--comment", "passthrough", "-j", "NFQUEUE"] + target + ["--queue-bypass"]


class Kernel:
    """Installs/removes passthrough's rules and applies element ops."""

    def __init__(self, cfg, nft=None):
        self.cfg = cfg
        self.nft = nft or Nft()
        self.backend = None
        self.iptables = _iptables()
        self.prefilter = None  # ifindexes where the BPF offload marks VPN candidates (nftables.render_fastpath)
        self._netlink_read_failing = False  # map_elements' warning, logged once per spell
        self._writer = None  # nftnetlink.ElementWriter, opened on first use; False: netlink failed

    # --- capability detection -----------------------------------------------------------------
    def detect_backend(self):
        want = self.cfg.queue_backend
        if want in ("auto", "nft"):
            probe = ("table ip passthrough_probe { chain c { type filter hook prerouting priority 0; "
                     "meta l4proto 253 queue flags bypass to %d; }\n}\ndelete table ip passthrough_probe\n" % self.cfg.queue_num)
            ok, _, err = self.nft.run(probe)
            self.nft.run("delete table ip passthrough_probe")
            if ok:
                return "nft"
            if want == "nft":
                raise KernelError("nft queue statement unsupported by this kernel (CONFIG_NFT_QUEUE / kmod-nft-queue): %s" % err.strip())
        # Probe the xt NFQUEUE target (nft_compat + xt_NFQUEUE) in a scratch chain.
        self.nft.run("table ip passthrough_probe {\n\tchain q {\n\t}\n}\n")
        try:
            nftnetlink.add_queue_rule("passthrough_probe", "q", self.cfg.queue_num)
        except OSError as e:
            raise KernelError("no way to queue packets: nft queue unsupported (kmod-nft-queue) and the xt NFQUEUE "
                              "target refused (nft_compat, xt_NFQUEUE): %s" % e)
        finally:
            self.nft.run("delete table ip passthrough_probe")
        return "xt"

    def check_features(self):
        """Fail early with a clear message if conntrack zones / ct timeout / maps are missing."""
        probe = ("table ip passthrough_probe {\n"
                 "\tct timeout t { protocol udp; l3proto ip; policy = { unreplied : 120, replied : 120 }; }\n"
                 "\tmap m { typeof ip saddr . @th,64,64 : ct zone; counter; }\n"
                 "\tchain c { type filter hook prerouting priority -250; ct zone set ip saddr . @th,64,64 map @m; }\n"
                 "\tchain d { type nat hook prerouting priority -110; ct zone != 0 dnat ip to ct zone map { 1 : 127.0.0.1 }; }\n"
                 "\tmap p { typeof ip saddr . ip daddr : udp sport; }\n"  # natt_ports' distinct ports
                 "\tchain s { type nat hook postrouting priority 99; udp sport 4500 masquerade to :ip saddr . ip daddr map @p; }\n"
                 "}\ndelete table ip passthrough_probe\n")
        ok, _, err = self.nft.run(probe)
        self.nft.run("delete table ip passthrough_probe")
        if not ok:
            raise KernelError("kernel lacks a feature passthrough needs (conntrack zones, ct timeout, nft maps "
                              "with raw payload keys, NAT, masquerade to a mapped port): %s" % err.strip())

    # --- install / remove ----------------------------------------------------------------------
    def install(self, backend):
        self.backend = backend
        self.nft.check(nftx.replace_table("ip", nftx.TABLE, nftx.render_fastpath(self.cfg, backend, self.prefilter)),
                       "installing fast-path table")
        self._install_policy_and_queue_rule()

    def adopt_or_install(self, backend):
        """Keep the fast-path table (and its learned maps) if a previous run left one: a daemon
        restart must not cut established VPNs. Returns the kept table's chain names (or None)."""
        kept = self._chain_names()  # chain names only: rules would print JSON warnings
        if not kept:
            self.install(backend)
            return None
        self.backend = backend
        try:
            self.reload_chains(self.cfg)
        except KernelError as e:
            # A table from an older layout whose maps changed type (e.g. esp_out was a set):
            # start clean; zones follow host addresses, so hosts keep theirs.
            log.warning("kept fast-path table does not fit this version (%s); reinstalling it", e)
            self.install(backend)
            return None
        self._install_policy_and_queue_rule()
        return kept

    def _install_policy_and_queue_rule(self):
        """The policy table and, on the xt backend, exactly one NFQUEUE rule in xt_queue."""
        self.apply_policy(self.cfg)
        self._iptables_rule("-D", quiet=True)  # an older version's rule: its marks are gone
        if self.backend == "xt":
            self.nft.check("flush chain ip %s %s" % (nftx.TABLE, nftx.XT_QUEUE), "emptying %s" % nftx.XT_QUEUE)
            try:
                nftnetlink.add_queue_rule(nftx.TABLE, nftx.XT_QUEUE, self.cfg.queue_num, self.cfg.queue_count)
            except OSError as e:
                raise KernelError(str(e))

    def alive(self, on=True):
        """The daemon's heartbeat (nftables.ALIVE_SET): while it lives, packets are queued;
        without it (stopped, killed) the fallback maps zone them at once."""
        if on:
            # Adding an element that exists does not renew its timeout (6.1 and 6.18 alike), so
            # it would lapse every few seconds: renew it by delete and add in one transaction,
            # which the packet path sees at once. Gone already (first start, a stall): add it.
            w = self._element_writer()
            if w is not None:
                key = nftnetlink.encode(("u8",), (4,))
                gone = dict(delete=True, table=nftx.TABLE, name=nftx.ALIVE_SET, key=key)
                add = dict(delete=False, table=nftx.TABLE, name=nftx.ALIVE_SET, key=key, timeout_ms=nftx.ALIVE_TIMEOUT * 1000)
                try:
                    if w.send([[gone, add]]) and w.send([[add]]):
                        log.warning("the heartbeat element was refused")
                    return
                except OSError as e:
                    self._writer_failed(e)
            elem = "element ip %s %s { 4 timeout %ds }" % (nftx.TABLE, nftx.ALIVE_SET, nftx.ALIVE_TIMEOUT)
            ok, _, _ = self.nft.run("delete element ip %s %s { 4 }\nadd %s\n" % (nftx.TABLE, nftx.ALIVE_SET, elem))
            if not ok:
                self.nft.run("add " + elem)
        else:
            self.nft.run("flush set ip %s %s" % (nftx.TABLE, nftx.ALIVE_SET))

    def reload_chains(self, cfg):
        """Swap the chains for a new config (toggles, devices) without losing map contents.
        Chains the kernel has but the new layout lacks (a table kept from an older version)
        are deleted, so no stale base chain stays hooked."""
        self.cfg = cfg
        body = nftx.render_fastpath(cfg, self.backend, self.prefilter)
        have = self._chain_names()
        if have is None:
            have = [n for n in nftx.FASTPATH_CHAINS]
        cmds = ["flush chain ip %s %s" % (nftx.TABLE, n) for n in have if n != nftx.XT_QUEUE]
        cmds += ["delete chain ip %s %s" % (nftx.TABLE, n) for n in have if n not in nftx.FASTPATH_CHAINS]
        # Re-declaring the table adds the new rules; the flush above removed the old ones.
        self.nft.check("\n".join(cmds) + "\n" + body, "reloading fast-path chains")

    def _chain_names(self):
        data = self.nft.list_json("chains ip")  # chains only: no rule JSON to render
        if data is None:
            return None
        return [item["chain"]["name"] for item in data
                if "chain" in item and item["chain"].get("table") == nftx.TABLE]

    def flowtables(self):
        """The nft flowtables of every table ([(family, table, name, devices)]), None if the
        listing failed."""
        data = self.nft.list_json("flowtables")
        return None if data is None else nftx.flowtables_of(data)

    def apply_policy(self, cfg):
        self.nft.check(nftx.replace_table("inet", nftx.POLICY_TABLE, nftx.render_policy(cfg)), "installing policy table")

    def remove(self, keep_policy=False):
        self.nft.run("delete table ip %s" % nftx.TABLE)
        if not keep_policy:
            self.nft.run("delete table inet %s" % nftx.POLICY_TABLE)
        self._iptables_rule("-D", quiet=True)

    def _iptables_rule(self, verb, quiet=False):
        if not self.iptables:
            return
        spec = iptables_queue_spec(self.cfg)
        cmd = [self.iptables, "-w", spec[0], spec[1], verb, spec[2]] + spec[3:]
        while True:
            p = subprocess.run(cmd, capture_output=True, text=True)
            if verb != "-D" or p.returncode != 0:
                break  # -D: repeat until every copy is gone
        if p.returncode != 0 and not quiet:
            raise KernelError("%s: %s" % (" ".join(cmd), p.stderr.strip()))

    # --- element ops ---------------------------------------------------------------------------------
    def apply(self, ops):
        """Apply ops in one transaction; what the kernel refuses does not block the rest: an add
        whose key is there with another value (a zone reused) replaces it, a delete of what is
        gone is no error. Returns the number of ops that failed. Over netlink; libnftables' text
        where netlink cannot be used."""
        if not ops:
            return 0
        w = self._element_writer()
        if w is not None:
            try:
                return self._apply_netlink(w, ops)
            except OSError as e:
                self._writer_failed(e)
        return self._apply_text(ops)

    def _element_writer(self):
        if self._writer is None:
            try:
                self._writer = nftnetlink.ElementWriter()
            except OSError as e:
                self._writer_failed(e)
        return self._writer or None

    def _writer_failed(self, e):
        log.warning("element writes over netlink: %s; writing them with libnftables from now on", e)
        if self._writer:
            self._writer.close()
        self._writer = False

    def _apply_netlink(self, w, ops):
        groups = [op_messages(op) for op in ops]
        failed = w.send(groups)
        n = 0
        for i in sorted(failed):  # refused adds: as replacements (delete, add), one by one
            if ops[i][0] == "del":
                continue
            err = w.send([op_messages(("del",) + tuple(ops[i][1:3])) + groups[i]])
            if err:
                n += 1
                log.warning("nft: %s: %s", nftx.render_op(ops[i]), os.strerror(err[0]))
        return n

    def _apply_text(self, ops):
        lines = [nftx.render_op(op) for op in ops]
        ok, _, err = self.nft.run("\n".join(lines) + "\n")
        if ok:
            return 0
        failed = 0
        for op, line in zip(ops, lines):
            ok, _, err = self.nft.run(line + "\n")
            if not ok and op[0] == "add":
                # Same key, other value (e.g. a zone reused): replace it.
                self.nft.run(nftx.render_op(("del",) + tuple(op[1:3])) + "\n")
                ok, _, err = self.nft.run(line + "\n")
            if not ok and op[0] != "del":
                failed += 1
                log.warning("nft: %s: %s", line, err.strip())
        return failed

    def map_elements(self, name):
        """[(key_parts, value, packets, comment)] of one of our maps, [] if it is not there.
        Over netlink (nat/nftnetlink.py: libnftables' JSON listing of a 4k-element map left
        ~17 MB on the heap); the JSON listing where netlink fails."""
        try:
            got = nftnetlink.map_elements(nftx.TABLE, name, nftx.ELEMENT_LAYOUT[name])
            self._netlink_read_failing = False
            return got
        except OSError as e:
            if not self._netlink_read_failing:  # once per failing spell: the refresh runs every few seconds
                log.warning("reading map %s over netlink: %s; listing it with libnftables meanwhile", name, e)
            self._netlink_read_failing = True
        return parse_elements(self.nft.list_json("map ip %s %s" % (nftx.TABLE, name)))

    # --- conntrack ----------------------------------------------------------------------------------------
    def flush_fallback(self):
        self.nft.run("flush map ip %s %s\nflush map ip %s %s\n" % (
            nftx.TABLE, nftx.FALLBACK_UDP, nftx.TABLE, nftx.FALLBACK_ESP))

    def flush_conntrack(self, family, zones):
        """Delete conntrack entries of a family in zone 0 and in our zones. Returns the number
        deleted. In-process over ctnetlink (one dump, one delete per entry); the conntrack tool
        (one process per zone and filter) where ctnetlink cannot be used."""
        try:
            from nat.ctnetlink import Conntrack

            ct = Conntrack()
            try:
                return ct.delete_matching(lambda e: conntrack_matches(family, e, zones))
            finally:
                ct.close()
        except OSError as e:
            log.warning("ctnetlink: %s; cutting %s connections with the conntrack tool", e, family)
        return self._flush_conntrack_cli(family, zones)

    def _flush_conntrack_cli(self, family, zones):
        if not which("conntrack"):
            log.warning("conntrack tool missing: existing %s connections are not cut", family)
            return 0
        cut = FAMILY_CONNTRACK[family]
        filters = [["-p", "udp", "--orig-port-" + d, str(p)] for p in cut["udp"] for d in ("dst", "src")]
        filters += [["-p", "tcp", "--orig-port-" + d, str(p)] for p in cut["tcp"] for d in ("dst", "src")]
        filters += [["-p", str(proto)] for proto in cut["protos"]]
        deleted = 0
        # Sequential, and a second pass: concurrent deletes interrupt each other's netlink dumps
        # (NLM_F_DUMP_INTR), which silently left entries behind.
        for _ in range(2):
            found = 0
            for zone in [0] + sorted(zones):
                for f in filters:
                    cmd = ["conntrack", "-D"] + f + (["-w", str(zone)] if zone else [])
                    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                    parts = p.stderr.split("):")[-1].split()
                    if parts and parts[0].isdigit():
                        found += int(parts[0])
            deleted += found
            if not found:
                break
        return deleted


# What switching a family off cuts: UDP / TCP ports (either end of the original direction) and
# IP protocols (L2TPv3 over IP 115; ESP 50, AH 51; GRE 47).
FAMILY_CONNTRACK = {
    "l2tp": {"udp": (1701,), "tcp": (), "protos": (115,)},
    "ipsec": {"udp": (500, 4500), "tcp": (), "protos": (50, 51)},
    "pptp": {"udp": (), "tcp": (1723,), "protos": (47,)},
}
IPPROTO_TCP, IPPROTO_UDP = 6, 17


def conntrack_matches(family, entry, zones):
    """entry (nat.ctnetlink.parse_entry's dict) is one of family's, in zone 0 or one of zones."""
    if entry["zone"] != 0 and entry["zone"] not in zones:
        return False
    cut = FAMILY_CONNTRACK[family]
    proto = entry["proto"]
    if proto in cut["protos"]:
        return True
    ports = cut["udp"] if proto == IPPROTO_UDP else cut["tcp"] if proto == IPPROTO_TCP else ()
    _src, _dst, sport, dport = entry["orig"]
    return sport in ports or dport in ports


def op_messages(op):
    """nftnetlink.element_msg arguments for an op tuple (nat/mapping.py), render_op's netlink
    twin: the element in its map, then in the map's key-only twin set."""
    verb, name, key = op[0], op[1], op[2]
    key_fields, value_field = nftx.ELEMENT_LAYOUT[name]
    raw = nftnetlink.encode(key_fields, key)
    msgs = [dict(delete=verb == "del", table=nftx.TABLE, name=name, key=raw)]
    if verb != "del":
        value = op[3] if len(op) > 3 else None
        if value is not None:
            msgs[0]["data"] = nftnetlink.encode((value_field,), (value,))
        if len(op) > 4 and op[4]:
            msgs[0]["comment"] = op[4].replace('"', "")
    if name in nftx.KEYSET:
        msgs.append(dict(delete=verb == "del", table=nftx.TABLE, name=nftx.KEYSET[name], key=raw))
    return msgs


def parse_elements(data):
    out = []
    if not data:
        return out
    for item in data:
        body = item.get("map") or item.get("set")
        if not body:
            continue
        for elem in body.get("elem", []):
            value = None
            if isinstance(elem, list):
                elem, value = elem[0], elem[1]
            packets, comment = 0, None
            if isinstance(elem, dict) and "elem" in elem:
                inner = elem["elem"]
                packets = (inner.get("counter") or {}).get("packets", 0)
                comment = inner.get("comment")
                elem = inner.get("val")
            parts = elem["concat"] if isinstance(elem, dict) and "concat" in elem else [elem]
            # nft 1.0.6's JSON prints a 64-bit payload (an IKE SPI) as a signed number
            key = tuple(p + (1 << 64) if isinstance(p, int) and p < 0 else p for p in parts)
            out.append((key, value, packets, comment))
    return out
