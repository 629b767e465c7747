"""The control-plane brain: decoded queued packets in, flow updates and kernel ops out.

Pure and MicroPython-compatible, so it is tested without root; the daemon (passthrough/daemon.py)
is a thin I/O shell that feeds it NFQUEUE packets and applies the ops with nft.

What reaches us (see nat/nftables.py, classify chain): outbound IKE and L2TP control packets, the
first packet of every LAN host and of every outbound ESP SPI; inbound IKE / ESP / L2TP packets
whose demux key the kernel does not know yet, and all inbound L2TP control packets.

Pairing inbound ESP SPIs: ESP SPIs are chosen by each receiver and carried encrypted in IKE, so a
router cannot read them. Like commercial routers we pair an unknown inbound SPI from server S with
the LAN host whose outbound SA to S began waiting for its inbound twin first (within pair_window
seconds; _pair_candidate). For NAT-T a distinct external port (natt_ports) names the host, so
only hosts sharing one port can be confused: two of them waiting in the same round trip, replies
reordered, can mis-pair (logged; the README's interop matrix measures it).
"""
from nat.mapping import (ZoneAllocator, HostTableFull, NattPorts, key_op, esp_out_op, parse_flow_comment,
                         KEY_MAP, ESP_OUT, NATT_PORT)
from passthrough.flows import Flow, FlowTable, TableFull, FAMILY

L2TP_CLOSING_GRACE = 10.0
PEER_GUESSES = 2  # peer-initiated IKE SAs tracked per (host, server) before replacing the oldest  # keep a tunnel's mapping this long after StopCCN so its ack gets through


def _int16(text):
    return int(text, 16)


class Engine:
    def __init__(self, cfg, log=None, natt_probe=None):
        """natt_probe(lan_ip, zone, remote_ip): the external port of an existing conntrack entry
        of the host's UDP 4500 -> remote:4500 connection, or None (the daemon's lookup; asked
        only for a (host, server) pair new to the NAT-T port table)."""
        self.cfg = cfg
        self.log = log or (lambda level, msg: None)
        self.natt_probe = natt_probe
        self.zones = ZoneAllocator(cfg.zone_base, cfg.max_hosts)
        self.flows = FlowTable(cfg.max_flows, cfg.flows_per_host, cfg.flow_timeout)
        # External ports of NAT-T flows (option natt_ports); bounded like the flow table.
        self.natt = NattPorts(max_pairs=cfg.max_flows, log=self.log)
        self.pending = {}       # (kind, lan_ip, remote_ip, out_spi) -> Flow awaiting its inbound SPI
        self.host_seen = {}     # lan_ip -> last activity (zone lifetime)
        self._full_logged = {}  # lan_ip -> next time a "quota full" warning may be logged
        # Indexes over self.flows, so per-packet lookups do not scan the whole table (a scan per
        # queued packet made 100k flows quadratic, and a WAN flood of unknown IKE SPIs cost
        # O(flows) each): (kind, lan_ip, remote_ip) -> {flow key: Flow}; remote_ip -> same for IKE.
        self._by_pair = {}
        self._ike_by_remote = {}
        self._esp_out_refs = {}  # (lan_ip, outbound SPI) -> SAs (pending or paired) using it
        self.stats = {"queued": 0, "outbound": 0, "inbound": 0, "malformed": 0, "unmatched": 0,
                      "paired": 0, "table_full": 0, "ambiguous": 0}
        self.stats_natt()

    def stats_natt(self):
        self.stats["natt_distinct"] = self.natt.allocated
        self.stats["natt_exhausted"] = self.natt.exhausted

    # --- helpers ---------------------------------------------------------------------------
    def _allowed(self, kind):
        return self.cfg.kind_enabled(FAMILY[kind])

    def _zone(self, lan_ip, now, ops):
        self.host_seen[lan_ip] = now
        try:
            zone, zops = self.zones.assign(lan_ip)
        except HostTableFull as e:
            self.stats["table_full"] += 1
            self.log("warning", "%s: %s; its VPN traffic gets plain NAT" % (lan_ip, e))
            return None
        if zops:
            self.log("info", "LAN host %s -> conntrack zone %d" % (lan_ip, zone))
        ops.extend(zops)
        return zone

    def _host_full(self, lan, now):
        """True (and counted, logged at most once a second) when `lan` has used its flow quota.
        Checked before a new flow is built: a flood of fresh SPIs from one host then costs a
        dict lookup per packet instead of a Flow, an exception and a formatted log line."""
        ft = self.flows
        if ft.per_host.get(lan, 0) < ft.flows_per_host:
            return False
        self.stats["table_full"] += 1
        if now >= self._full_logged.get(lan, 0):
            self._full_logged[lan] = now + 1.0
            self.log("warning", "host %s has %d flows (flows_per_host): new flows not tracked" % (lan, ft.flows_per_host))
        return True

    def _natt_port(self, d, lan, remote, zone, now, ops):
        """The external port of lan's UDP 4500 flow to remote (4500 for other ports): claimed
        here, before the packet's verdict, so the nat chain finds a distinct port's element
        when this packet opens the connection."""
        if d.get("sport") != NATT_PORT or d.get("dport") != NATT_PORT:
            return d.get("sport")
        found = None
        distinct = self.cfg.natt_ports_mode() == "distinct"
        had = self.natt.port(lan, remote)
        if self.natt_probe is not None and (had is None or self.natt.off_plan(lan, remote, distinct)):
            found = self.natt_probe(lan, zone, remote)
            if had is not None and found != had:
                # planned under another mode (or for a connection that is gone): plan again
                self.log("info", "NAT-T %s -> %s: port %d no longer in use; planned again (%s)" % (
                    lan, remote, had, self.cfg.natt_ports_mode()))
                ops.extend(self.natt.release(lan, remote))
                if distinct:  # the others at 4500 may be just as stale: only a live connection keeps it
                    for other in self.natt.keepers_of(remote):
                        z = self.zones.zone_of(other)
                        if other != lan and (z is None or self.natt_probe(other, z, remote) is None):
                            ops.extend(self.natt.release(other, remote))
        port, nops = self.natt.claim(lan, zone, remote, now, distinct, found)
        ops.extend(nops)
        self.stats_natt()
        return port

    # --- flow indexes ---------------------------------------------------------------------------
    def _index(self, f):
        fk = (f.kind, f.remote_ip, f.key)
        pair = (f.kind, f.lan_ip, f.remote_ip)
        d = self._by_pair.get(pair)
        if d is None:
            d = self._by_pair[pair] = {}
        d[fk] = f
        if f.kind == "ike":
            d = self._ike_by_remote.get(f.remote_ip)
            if d is None:
                d = self._ike_by_remote[f.remote_ip] = {}
            d[fk] = f

    def _unindex(self, f):
        fk = (f.kind, f.remote_ip, f.key)
        for idx, ik in ((self._by_pair, (f.kind, f.lan_ip, f.remote_ip)), (self._ike_by_remote, f.remote_ip)):
            d = idx.get(ik)
            if d is not None and d.get(fk) is f:
                del d[fk]
                if not d:
                    del idx[ik]

    def _live(self, idx, ik):
        """The indexed flows still in the table (stale entries are dropped on the way)."""
        d = idx.get(ik)
        if not d:
            return []
        table = self.flows.flows
        out = []
        for fk in list(d):
            f = d[fk]
            if table.get(fk) is f:
                out.append(f)
            else:
                del d[fk]
        if not d:
            del idx[ik]
        return out

    def _find(self, kind, lan, remote):
        return self._live(self._by_pair, (kind, lan, remote))

    def _ike_to(self, remote):
        return self._live(self._ike_by_remote, remote)

    def _dead_ops(self, dead, ops):
        for f in dead:
            self._unindex(f)
            op = key_op(f, add=False)
            if op:
                ops.append(op)
            self._esp_out_del(f, ops)

    # The kernel's esp_out set is keyed (LAN host, outbound SPI), without the server: two SAs of
    # one host with the same outbound SPI towards two servers share the element, so it is
    # deleted only with the last of them (else that SA's every packet would be queued).
    def _esp_out_add(self, f, ops):
        op = esp_out_op(f)
        if op:
            k = (f.lan_ip, f.key_out)
            n = self._esp_out_refs.get(k, 0)
            self._esp_out_refs[k] = n + 1
            if n == 0:
                ops.append(op)

    def _esp_out_del(self, f, ops):
        op = esp_out_op(f, add=False)
        if op:
            k = (f.lan_ip, f.key_out)
            n = self._esp_out_refs.get(k, 0) - 1
            if n > 0:
                self._esp_out_refs[k] = n
            else:
                self._esp_out_refs.pop(k, None)
                ops.append(op)

    def _add_flow(self, flow, now, ops):
        if len(self.flows) >= self.flows.max_flows:
            # Make room here rather than inside FlowTable.add, which would forget the expired
            # flows without their kernel elements being deleted.
            self._dead_ops(self.flows.expire(now), ops)
        try:
            self.flows.add(flow)
        except TableFull as e:
            self.stats["table_full"] += 1
            self.log("warning", "not tracking %s %s: %s" % (flow.kind, flow.key_text(), e))
            return None
        self._index(flow)
        op = key_op(flow)
        if op:
            ops.append(op)
        return flow

    def _own_flow(self, kind, remote, key, lan, ops):
        """The flow for (kind, remote, key) if it belongs to lan. Another host sending the same
        key (two hosts picked the same random SPI / tunnel id towards one server) takes it over:
        the newest sender wins, logged."""
        f = self.flows.get(kind, remote, key)
        if f is not None and f.lan_ip != lan:
            self.log("warning", "%s key %s to %s moved from %s to %s" % (kind, f.key_text(), remote, f.lan_ip, lan))
            self._drop_flow(f, ops)
            return None
        return f

    def _drop_flow(self, flow, ops):
        if self.flows.remove(flow):
            self._dead_ops([flow], ops)

    # --- the entry point ---------------------------------------------------------------------
    def handle(self, d, inbound, now):
        """Process one decoded packet (passthrough.proto.decode_ip dict); return kernel ops."""
        self.stats["queued"] += 1
        ops = []
        if d.get("error") and d.get("proto") in (None, "other"):
            self.stats["malformed"] += 1
            return ops
        proto = d.get("proto")
        if d.get("ipver") != 4:
            return ops  # NAT (and so zones) only exist for IPv4
        if inbound:
            self.stats["inbound"] += 1
            self._inbound(d, proto, now, ops)
        else:
            self.stats["outbound"] += 1
            self._outbound(d, proto, now, ops)
        return ops

    # --- LAN -> WAN ----------------------------------------------------------------------------
    def _outbound(self, d, proto, now, ops):
        lan, remote = d["src"], d["dst"]
        if proto == "l2tp":
            if not self._allowed("l2tp"):
                return
        elif proto in ("ike", "esp", "natt-keepalive"):
            if not self._allowed("ike"):
                return
        elif d.get("l4") == 17 and not (d.get("sport") in (500, 4500, 1701) or d.get("dport") in (500, 4500, 1701)):
            return
        zone = self._zone(lan, now, ops)
        if zone is None or d.get("error"):
            if d.get("error"):
                self.stats["malformed"] += 1
                self.log("debug", "outbound %s from %s: %s" % (proto, lan, d["error"]))
            return
        if proto == "ike" and d.get("ike_spi_i"):
            self._ike_out(d, lan, remote, zone, now, ops)
        elif proto == "esp" and d.get("esp_spi"):
            self._esp_out(d, lan, remote, zone, now, ops)
        elif proto == "l2tp" and d.get("l2tp_version") == 2:
            self._l2tp_out(d, lan, remote, zone, now, ops)

    def _ike_out(self, d, lan, remote, zone, now, ops):
        spi_i = _int16(d["ike_spi_i"])
        if spi_i == 0:
            return
        f = self._own_flow("ike", remote, spi_i, lan, ops)
        if f is None:
            if self._host_full(lan, now):
                return
            f = Flow("ike", lan, remote, spi_i, now, zone)
            f.lan_port, f.wan_port, f.remote_port = d["sport"], d["sport"], d["dport"]
            f.detail = "IKEv%s" % d.get("ike_version")
            if self._add_flow(f, now, ops) is None:
                return
            self.log("info", "IKE SA %016x %s:%s -> %s:%s (zone %d)" % (spi_i, lan, d["sport"], remote, d["dport"], zone))
        f.touch(now)
        f.remote_port = d["dport"]
        f.lan_port = d["sport"]
        # After the flow is tracked: a claim is bounded by the flow table, not by packets.
        f.wan_port = self._natt_port(d, lan, remote, zone, now, ops)
        if f.state == "peer-initiated":
            f.state = "up"  # the host answered on it: no longer a guess
        if d.get("ike_spi_r") and d["ike_spi_r"] != "0" * 16:
            f.key_out = _int16(d["ike_spi_r"])
        f.state = d.get("ike_exchange") or f.state

    def _esp_out(self, d, lan, remote, zone, now, ops):
        spi = _int16(d["esp_spi"])
        kind = "natt" if d.get("esp_udp") else "esp"
        for f in self._find(kind, lan, remote):
            if f.key_out == spi:
                f.touch(now)
                return  # kernel already knows it; raced with the set update
        pk = (kind, lan, remote, spi)
        if pk in self.pending:
            self.pending[pk].touch(now)
            return
        limit = max(16, self.cfg.max_flows // 4)
        if len(self.pending) >= limit:
            self._expire_pending(now, ops)
            if len(self.pending) >= limit:
                self.stats["table_full"] += 1
                self.log("warning", "pending ESP table full (%d); %s SPI %08x not tracked" % (limit, lan, spi))
                return
        f = Flow(kind, lan, remote, None, now, zone)
        f.key_out = spi
        f.state = "pending"
        if kind == "natt":
            f.lan_port, f.remote_port = d["sport"], d["dport"]
        f.touch(now)
        self.pending[pk] = f
        if kind == "natt":
            f.wan_port = self._natt_port(d, lan, remote, zone, now, ops)
        self._esp_out_add(f, ops)
        self.log("info", "%s SA out %08x %s -> %s (zone %d) waiting for inbound SPI" % (kind.upper(), spi, lan, remote, zone))

    def _l2tp_out(self, d, lan, remote, zone, now, ops):
        if not d.get("l2tp_control"):
            return
        mtype = d.get("l2tp_type")
        tid = d.get("l2tp_assigned_tunnel")
        f = None
        if mtype == "SCCRQ" and tid:
            f = self._own_flow("l2tp", remote, tid, lan, ops)
            if f is None:
                if self._host_full(lan, now):
                    return
                f = Flow("l2tp", lan, remote, tid, now, zone)
                f.lan_port = f.wan_port = d["sport"]
                f.remote_port = d["dport"]
                if self._add_flow(f, now, ops) is None:
                    return
                self.log("info", "L2TP tunnel %d %s:%s -> %s:%s (zone %d)" % (tid, lan, d["sport"], remote, d["dport"], zone))
        else:
            # Later messages carry the peer's tunnel id in the header: find our tunnel by it.
            peer_tid = d.get("l2tp_tunnel")
            for cand in self._find("l2tp", lan, remote):
                if cand.key_out == peer_tid:
                    f = cand
                    break
            if f is None:
                return
            f.remote_port = d["dport"]
        f.touch(now)
        if mtype and mtype != "ZLB":
            f.state = mtype
        if mtype == "StopCCN":
            f.expires = now + L2TP_CLOSING_GRACE

    # --- WAN -> LAN ----------------------------------------------------------------------------
    def _inbound(self, d, proto, now, ops):
        remote = d["src"]
        if d.get("error"):
            self.stats["malformed"] += 1
            self.log("debug", "inbound %s from %s: %s" % (proto, remote, d["error"]))
            return
        if proto == "ike" and d.get("ike_spi_i"):
            if self._allowed("ike"):
                self._ike_in(d, remote, now, ops)
        elif proto == "esp" and d.get("esp_spi"):
            if self._allowed("esp"):
                self._esp_in(d, remote, now, ops)
        elif proto == "l2tp" and d.get("l2tp_version") == 2:
            if self._allowed("l2tp"):
                self._l2tp_in(d, remote, now, ops)

    def _ike_in(self, d, remote, now, ops):
        spi_i = _int16(d["ike_spi_i"])
        f = self.flows.get("ike", remote, spi_i)
        if f is not None:
            f.touch(now)
            return
        # A new IKE SA started by the server (rekey/reauth as initiator): only unambiguous when
        # exactly one LAN host talks IKE with this server.
        hosts = set(x.lan_ip for x in self._ike_to(remote))
        if len(hosts) != 1:
            self.stats["unmatched" if not hosts else "ambiguous"] += 1
            self.log("info", "inbound IKE SPI %016x from %s matches %s" % (
                spi_i, remote, "no LAN host" if not hosts else "%d LAN hosts; not forwarded" % len(hosts)))
            return
        lan = hosts.pop()
        zone = self._zone(lan, now, ops)
        if zone is None:
            return
        # Spoofed floods from the server's address must not fill the host's flow quota: keep at
        # most PEER_GUESSES of these guesses per host and server, replacing the oldest.
        guesses = [x for x in self._find("ike", lan, remote) if x.state == "peer-initiated"]
        if len(guesses) >= PEER_GUESSES:
            guesses.sort(key=lambda x: x.last_seen)
            self._drop_flow(guesses[0], ops)
        f = Flow("ike", lan, remote, spi_i, now, zone)
        f.state = "peer-initiated"
        f.remote_port, f.wan_port = d["sport"], d["dport"]
        f.lan_port = d["dport"]
        f.detail = "IKEv%s (peer-initiated)" % d.get("ike_version")
        if self._add_flow(f, now, ops):
            f.touch(now)
            self.log("info", "IKE SA %016x from %s -> %s (peer-initiated, zone %d)" % (spi_i, remote, lan, zone))

    def _esp_in(self, d, remote, now, ops):
        spi = _int16(d["esp_spi"])
        kind = "natt" if d.get("esp_udp") else "esp"
        f = self.flows.get(kind, remote, spi)
        if f is not None:
            f.touch(now)
            return
        best = self._pair_candidate(kind, remote, d.get("dport") if kind == "natt" else None, now)
        if best is None:
            self.stats["unmatched"] += 1
            self.log("info", "inbound %s SPI %08x from %s: no LAN host waiting for it" % (kind.upper(), spi, remote))
            return
        del self.pending[(kind, best.lan_ip, remote, best.key_out)]
        for pk in list(self.pending):  # the host's older unanswered SAs to remote were replaced
            p = self.pending[pk]
            if pk[0] == kind and pk[1] == best.lan_ip and pk[2] == remote and p.created < best.created:
                self._esp_out_del(self.pending.pop(pk), ops)
        best.key = spi
        best.state = "up"
        if self._add_flow(best, now, ops) is None:
            self._esp_out_del(best, ops)
            return
        best.touch(now)
        self.stats["paired"] += 1
        self.host_seen[best.lan_ip] = now
        self.log("info", "%s SA in %08x from %s -> %s (paired with out %08x, zone %d)" % (
            kind.upper(), spi, remote, best.lan_ip, best.key_out, best.zone))

    def _pair_candidate(self, kind, remote, port, now):
        """The waiting outbound SA an unknown inbound SPI from `remote` (to our `port`, NAT-T)
        belongs to, or None.

        NAT-T: the external port decides first. A SA waits on the port its host's connection
        was translated to (wan_port), and only SAs waiting on the packet's port compete: a
        distinct port names its host outright, and at 4500 the hosts moved to a distinct port
        are out of the running. (A guess across ports would be wrong more often than right,
        and a wrong pair outranks the port in the kernel's classify chain.)
        Then, per host, only its newest waiting SA counts: an older one that never got an
        answer was replaced (a new IKE SA, a client restarted). Of those, the host that began
        waiting first: replies come back in the order their requests left; but a SA that began
        waiting before its host's latest IKE SA to `remote` comes last: it is left over from
        a negotiation the host gave up (the interop matrix caught one, unanswered for 23 s,
        taking the reply meant for the other host's fresh SA)."""
        newest = {}
        for pk in self.pending:
            p = self.pending[pk]
            if p.kind != kind or p.remote_ip != remote or now - p.created > self.cfg.pair_window:
                continue
            if port is not None and p.wan_port is not None and p.wan_port != port:
                continue
            have = newest.get(p.lan_ip)
            if have is None or p.created > have.created:
                newest[p.lan_ip] = p
        best = best_rank = None
        for p in newest.values():
            began = 0
            for ike in self._find("ike", p.lan_ip, remote):
                if ike.created > began:
                    began = ike.created
            rank = (p.created < began, p.created)
            if best is None or rank < best_rank:
                best, best_rank = p, rank
        return best

    def _l2tp_in(self, d, remote, now, ops):
        tid = d.get("l2tp_tunnel")
        f = self.flows.get("l2tp", remote, tid) if tid else None
        if f is None:
            self.stats["unmatched"] += 1
            if tid:
                self.log("info", "inbound L2TP tunnel %s from %s matches no LAN host" % (tid, remote))
            return
        f.touch(now)
        mtype = d.get("l2tp_type")
        if d.get("l2tp_control"):
            if mtype == "SCCRP" and d.get("l2tp_assigned_tunnel"):
                known = (f.key_out, f.remote_port)
                f.key_out = d["l2tp_assigned_tunnel"]
                if d["sport"] != f.remote_port:
                    self.log("info", "L2TP tunnel %d: %s answers from port %d (RFC 2661 8.1)" % (tid, remote, d["sport"]))
                f.remote_port = d["sport"]
                if (f.key_out, f.remote_port) != known:
                    # The element's comment is what a restarted daemon re-adopts: rewrite it
                    # (delete + add, one transaction) with the LNS's tunnel id and port.
                    ops.append(key_op(f, add=False))
                    ops.append(key_op(f))
            if mtype and mtype != "ZLB":
                f.state = mtype
            if mtype == "StopCCN":
                f.expires = now + L2TP_CLOSING_GRACE

    # --- housekeeping ----------------------------------------------------------------------------
    def _expire_pending(self, now, ops):
        for pk in list(self.pending):
            p = self.pending[pk]
            if now - p.last_seen > self.cfg.pair_window:
                del self.pending[pk]
                self._esp_out_del(p, ops)

    def expire(self, now):
        """Time out idle flows, stale pending SAs and hosts with nothing left; return ops."""
        ops = []
        dead = self.flows.expire(now)
        self._dead_ops(dead, ops)
        for f in dead:
            self.log("info", "%s %s of %s expired" % (f.kind, f.key_text(), f.lan_ip))
        self._expire_pending(now, ops)
        ops.extend(self._expire_natt(now))
        busy = set(self.flows.hosts())
        for pk in self.pending:
            busy.add(pk[1])
        for lan in self.zones.hosts():
            if lan not in busy and now - self.host_seen.get(lan, 0) > self.cfg.flow_timeout:
                zone, zops = self.zones.release(lan)
                ops.extend(zops)
                self.host_seen.pop(lan, None)
                self._full_logged.pop(lan, None)
                self.log("info", "LAN host %s released zone %d" % (lan, zone))
        return ops

    def _expire_natt(self, now):
        """Release the NAT-T ports of (host, server) pairs with no flow to the server's 4500
        left, held past the flows for a conntrack timeout: the connection's translation lives as
        long as its conntrack entry, and replies to its port must still find the host. The
        flows' activity (which the kernel's counters keep up to date) touches their pair."""
        waiting = {}
        for p in self.pending.values():
            if p.kind == "natt":
                k = (p.lan_ip, p.remote_ip)
                waiting[k] = max(waiting.get(k, 0), p.last_seen)

        def live(lan, remote):
            found = (lan, remote) in waiting
            if found:
                self.natt.touch(lan, remote, waiting[(lan, remote)])
            for kind in ("ike", "natt"):
                for f in self._find(kind, lan, remote):
                    if f.remote_port == NATT_PORT:
                        found = True
                        self.natt.touch(lan, remote, f.last_seen)
            return found

        ops = self.natt.expire(now, self.cfg.udp_timeout, live)
        self.stats_natt()
        return ops

    def drop_family(self, family):
        """Forget every flow of a family (its toggle went off); return ops."""
        ops = []
        for f in list(self.flows.flows.values()):
            if FAMILY[f.kind] == family:
                self._drop_flow(f, ops)
        if family == "ipsec":
            for pk in list(self.pending):
                self._esp_out_del(self.pending.pop(pk), ops)
            ops.extend(self.natt.release_all())  # their conntrack entries are cut too
        return ops

    def set_config(self, cfg):
        """Apply a reloaded config; returns (ops, families switched off)."""
        old = self.cfg
        self.cfg = cfg
        self.flows.max_flows = cfg.max_flows
        self.flows.flows_per_host = cfg.flows_per_host
        self.flows.timeout = cfg.flow_timeout
        self.natt.max_pairs = cfg.max_flows
        ops, off = [], []
        for fam in ("ipsec", "l2tp", "pptp"):
            if old.kind_enabled(fam) and not cfg.kind_enabled(fam):
                off.append(fam)
                ops.extend(self.drop_family(fam))
        return ops, off

    def adopt(self, lan_zone, keyed, esp_out, now, natt_out=(), natt_in=()):
        """Rebuild state from what the kernel kept across a daemon restart.

        lan_zone: [(lan_ip, zone)]; keyed: [(map_name, remote_ip, key, zone, comment)];
        esp_out: [(lan_ip, spi)]; natt_out: [(lan_ip, remote_ip, port, comment)]; natt_in:
        [(remote_ip, port, zone, comment)]. Returns ops removing what cannot be re-adopted (so
        those packets get queued and learned afresh) and the number of flows adopted.
        """
        ops = []
        for lan, zone in lan_zone:
            self.zones.assign(lan, zone)
            self.host_seen[lan] = now
        adopted = 0
        known_out = set()
        for name, remote, key, zone, comment in keyed:
            info = parse_flow_comment(comment)
            lan = self.zones.host_of(zone)
            if info is None or lan is None or info[1] != lan or KEY_MAP[info[0]] != name:
                ops.append(("del", name, (remote, key)))
                continue
            f = Flow(info[0], lan, remote, key, now, zone)
            f.lan_port = f.wan_port = info[2]
            f.remote_port = info[3]
            f.key_out = info[4]
            f.detail = "adopted"
            try:
                self.flows.add(f)
            except TableFull:
                ops.append(("del", name, (remote, key)))
                continue
            self._index(f)
            adopted += 1
            if f.kind in ("esp", "natt") and f.key_out is not None:
                known_out.add((lan, f.key_out))
                self._esp_out_refs[(lan, f.key_out)] = self._esp_out_refs.get((lan, f.key_out), 0) + 1
        for lan, spi in esp_out:
            if (lan, spi) not in known_out:
                ops.append(("del", ESP_OUT, (lan, spi)))
        nops, _ = self.natt.adopt(natt_out, natt_in, self.zones.zone_of, now)
        ops.extend(nops)
        # Adopted NAT-T flows without a distinct port kept 4500 (their conntrack entries say
        # so): they hold it, and a host new to their server gets a port of its own.
        for f in self.flows.flows.values():
            if f.kind in ("ike", "natt") and f.lan_port == NATT_PORT and f.remote_port == NATT_PORT:
                self.natt.adopt_keeper(f.lan_ip, f.remote_ip, now)
                f.wan_port = self.natt.port(f.lan_ip, f.remote_ip) or NATT_PORT
        return ops, adopted

    def status(self, now):
        rows = [f.as_dict(now) for f in self.flows.flows.values()]
        rows.extend(p.as_dict(now) for p in self.pending.values())
        rows.sort(key=lambda r: (r["lan_ip"], r["kind"], r["key"] or ""))
        return rows

    def zone_hosts(self):
        out = {}
        for lan in self.zones.by_host:
            out[lan] = self.zones.by_host[lan]
        return out
