"""NAT-T-aware mapping: one conntrack zone per LAN host, and the demux keys that steer inbound
packets into the right zone.

Why zones: kernel NAT cannot tell two LAN hosts apart when both run raw ESP (no ports) to one
server, or both use source port 500/4500/1701 towards it: the translated reply tuples clash.
In a zone of its own each host keeps its ports (port preservation) and its ESP tuple. Outbound
packets get the zone of their LAN source address; inbound ones the zone learned for their key
(IKE initiator SPI, ESP SPI, L2TP tunnel id). A new inbound connection inside a host's zone
(e.g. an LNS answering from another port, RFC 2661 §8.1) is DNATed to that host.

Pure and MicroPython-compatible: produces kernel ops as tuples, which nat/nftables.py renders.
Op forms: ("add", map_name, key_tuple, value) and ("del", map_name, key_tuple).
"""

# Kernel maps (names shared with nat/nftables.py).
LAN_ZONE = "lan_zone"     # lan ip -> zone
ZONE_LAN = "zone_lan"     # zone -> lan ip (DNAT target of new inbound connections in the zone)
IKE_ZONE = "ike_zone"     # remote ip . IKE initiator SPI (64 bit) -> zone
ESP_ZONE = "esp_zone"     # remote ip . inbound ESP SPI (32 bit, raw and in UDP) -> zone
ESP_OUT = "esp_out"       # lan ip . outbound ESP SPI already seen -> zone (data zoned in one lookup)
L2TP_ZONE = "l2tp_zone"   # remote ip . L2TP tunnel id of the LAN side (16 bit) -> zone

KEY_MAP = {"ike": IKE_ZONE, "esp": ESP_ZONE, "natt": ESP_ZONE, "l2tp": L2TP_ZONE}


class HostTableFull(Exception):
    pass


class ZoneAllocator:
    """Hands out zones zone_base+1 .. zone_base+max_hosts to LAN hosts.

    A host's zone is derived from its address (low 16 bits modulo max_hosts; the next free one
    on a clash), so a restarted daemon that lost its maps gives each host the zone it had: the
    host's conntrack entries there stay valid, and no host inherits another's stale entries
    (with raw ESP those would clash with its own and block it).
    """

    def __init__(self, zone_base=4096, max_hosts=256):
        self.zone_base = zone_base
        self.max_hosts = max_hosts
        self.by_host = {}
        self.by_zone = {}

    def zone_of(self, lan_ip):
        return self.by_host.get(lan_ip)

    def host_of(self, zone):
        return self.by_zone.get(zone)

    def preferred(self, lan_ip):
        low = 0
        parts = lan_ip.split(".")
        if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
            low = int(parts[2]) * 256 + int(parts[3])
        return self.zone_base + 1 + low % self.max_hosts

    def assign(self, lan_ip, zone=None):
        """Zone for lan_ip and the ops that program it ([] when it already had one).

        `zone` forces a value (re-adopting state the kernel kept across a daemon restart).
        """
        z = self.by_host.get(lan_ip)
        if z is not None:
            return z, []
        if zone is None:
            if len(self.by_zone) >= self.max_hosts:
                raise HostTableFull("all %d host zones in use" % self.max_hosts)
            zone = self.preferred(lan_ip)
            first = self.zone_base + 1
            while zone in self.by_zone:
                zone = first + (zone + 1 - first) % self.max_hosts
        self.by_host[lan_ip] = zone
        self.by_zone[zone] = lan_ip
        return zone, [("add", LAN_ZONE, (lan_ip,), zone), ("add", ZONE_LAN, (zone,), lan_ip)]

    def release(self, lan_ip):
        z = self.by_host.pop(lan_ip, None)
        if z is None:
            return None, []
        self.by_zone.pop(z, None)
        return z, [("del", LAN_ZONE, (lan_ip,)), ("del", ZONE_LAN, (z,))]

    def hosts(self):
        return list(self.by_host)


def key_op(flow, add=True):
    """The kernel demux op for a flow's inbound key (None while an ESP SA waits for pairing)."""
    if flow.key is None or flow.zone is None:
        return None
    name = KEY_MAP[flow.kind]
    if add:
        return ("add", name, (flow.remote_ip, flow.key), flow.zone, flow_comment(flow))
    return ("del", name, (flow.remote_ip, flow.key))


def flow_comment(flow):
    """What the kernel keeps about a flow in its map element's comment, so that a restarted
    daemon can re-adopt the flow (parse_flow_comment reverses it)."""
    return "%s %s %s %s %s" % (flow.kind, flow.lan_ip, flow.lan_port, flow.remote_port, flow.key_out)


def parse_flow_comment(text):
    """(kind, lan_ip, lan_port, remote_port, key_out) or None when it is not ours."""
    parts = (text or "").split()
    if len(parts) != 5 or parts[0] not in KEY_MAP:
        return None

    def num(x):
        return None if x == "None" else int(x)

    try:
        return parts[0], parts[1], num(parts[2]), num(parts[3]), num(parts[4])
    except ValueError:
        return None


def esp_out_op(flow, add=True):
    if flow.kind not in ("esp", "natt") or flow.key_out is None or flow.zone is None:
        return None
    if add:
        return ("add", ESP_OUT, (flow.lan_ip, flow.key_out), flow.zone)
    return ("del", ESP_OUT, (flow.lan_ip, flow.key_out))


# --- NAT-T port policy (option natt_ports) -------------------------------------------------------
# Servers that key clients by address AND port (libreswan instances, MikroTik, Windows RRAS)
# cannot tell apart two hosts behind us that both keep source port 4500. In 'distinct' mode the
# first host talking NAT-T to a server keeps 4500 and every later one gets an external port of
# its own for its UDP 4500 flow: the nat chain masquerades the first packet of the host's
# connection to it (natt_out), and the server's replies to that port are zoned to the host by
# port (natt_in), before any SPI is known. UDP 500 and L2TP are never translated.
NATT_OUT = "natt_out"     # lan ip . remote ip -> external source port of the host's 4500 flow
NATT_IN = "natt_in"       # remote ip . external port -> zone (replies to a distinct port)
NATT_PORT = 4500
# The distinct ports: 14500-15523, per server. Below every common ephemeral range (Linux
# 32768-60999, Windows/BSD/macOS 49152-65535, old Windows 1025-5000), so a LAN host's own
# source port, which masquerade keeps, is unlikely to be one of them; only a flow to the same
# server's port 4500 could meet one anyway (natt_in matches the server's source port 4500).
NATT_PORT_FIRST = 14500
NATT_PORT_COUNT = 1024


def natt_comment(lan_ip, remote_ip, port):
    """The comment of a distinct port's natt_out / natt_in elements: what a restarted daemon
    checks before re-adopting them (parse_natt_comment reverses it)."""
    return "natt-port %s %s %d" % (lan_ip, remote_ip, port)


def parse_natt_comment(text):
    """(lan_ip, remote_ip, port) or None when it is not ours."""
    parts = (text or "").split()
    if len(parts) != 4 or parts[0] != "natt-port":
        return None
    try:
        return parts[1], parts[2], int(parts[3])
    except ValueError:
        return None


def _low16(ip):
    parts = ip.split(".")
    if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
        return int(parts[2]) * 256 + int(parts[3])
    return 0


class NattPorts:
    """External NAT-T source port of each (LAN host, server) pair talking UDP 4500.

    Every pair is recorded, in both modes: a host at 4500 "keeps" it (no kernel element: plain
    masquerade keeps the port in the host's zone), a host with a distinct port has a natt_out
    and a natt_in element. Recording keepers in 'preserve' mode too means a switch to 'distinct'
    knows who holds 4500 already (their conntrack entries keep it). A pair lives while its
    flows do, plus `hold` seconds after its last activity (its conntrack entry may outlive an
    idle flow); then its port is free again.

    A host's port derives from its address (first + low 16 bits modulo count, the next free on
    a clash), so a restarted daemon that lost its maps gives a host the port it had.
    """

    def __init__(self, first=NATT_PORT_FIRST, count=NATT_PORT_COUNT, max_pairs=4096, log=None):
        self.first = first
        self.count = count
        self.max_pairs = max_pairs
        self.log = log or (lambda level, msg: None)
        self.port_of = {}    # (lan_ip, remote_ip) -> external port (NATT_PORT: keeps it)
        self.zone_of = {}    # (lan_ip, remote_ip) -> zone, of pairs with a distinct port
        self.owners = {}     # remote_ip -> {distinct port: lan_ip}
        self.keepers = {}    # remote_ip -> {lan_ip: True}, the hosts at 4500 towards it
        self.seen = {}       # (lan_ip, remote_ip) -> last activity
        self.exhausted = 0   # claims that found no free port (they kept 4500)
        self.allocated = 0   # distinct ports handed out
        self._full_logged = {}  # remote_ip -> next time the "range exhausted" warning may be logged

    def __len__(self):
        return len(self.port_of)

    def distinct_in_use(self):
        return len(self.zone_of)

    def pairs(self):
        return list(self.port_of)

    def range_text(self):
        return "%d-%d" % (self.first, self.first + self.count - 1)

    def port(self, lan_ip, remote_ip):
        return self.port_of.get((lan_ip, remote_ip))

    def owner(self, remote_ip, port):
        """The LAN host a distinct port towards remote_ip belongs to (None: not ours)."""
        return self.owners.get(remote_ip, {}).get(port)

    def _ops(self, verb, lan, remote, port, zone):
        if verb == "del":
            return [("del", NATT_OUT, (lan, remote)), ("del", NATT_IN, (remote, port))]
        c = natt_comment(lan, remote, port)
        return [("add", NATT_OUT, (lan, remote), port, c), ("add", NATT_IN, (remote, port), zone, c)]

    def _keep(self, lan, remote):
        self.port_of[(lan, remote)] = NATT_PORT
        k = self.keepers.get(remote)
        if k is None:
            k = self.keepers[remote] = {}
        k[lan] = True
        return NATT_PORT

    def _free_port(self, lan, remote):
        taken = self.owners.get(remote, {})
        if len(taken) >= self.count:
            return None
        p = self.first + _low16(lan) % self.count
        while p in taken:
            p = self.first + (p + 1 - self.first) % self.count
        return p

    def _take(self, lan, remote, port, zone):
        self.port_of[(lan, remote)] = port
        self.zone_of[(lan, remote)] = zone
        d = self.owners.get(remote)
        if d is None:
            d = self.owners[remote] = {}
        d[port] = lan

    def keepers_of(self, remote):
        """The hosts recorded at 4500 towards remote."""
        return list(self.keepers.get(remote, {}))

    def off_plan(self, lan, remote, distinct):
        """True when lan's recorded port to remote may not be what the mode would give it now:
        any distinct port (wrong under 'preserve'; under 'distinct' the host may be alone again),
        or 4500 under 'distinct' while another host keeps 4500 too. Such a record may have
        outlived the mode or the connection it was made for; the caller asks conntrack whether
        that connection still stands (it keeps its translation) before planning it again."""
        p = self.port_of.get((lan, remote))
        if p is None:
            return False
        if p != NATT_PORT:
            return True  # under 'distinct' too: once its connection is gone, 4500 may be free again
        return distinct and any(h != lan for h in self.keepers.get(remote, {}))

    def claim(self, lan, zone, remote, now, distinct, found=None):
        """External port for lan's UDP 4500 flow to remote, and the ops that program it ([] if
        it keeps 4500 or already had its port). Called for the host's outbound 4500 packets the
        daemon sees, before their verdict: the first packet of a new connection then meets the
        natt_out element in the nat chain. Never raises: whatever goes wrong keeps 4500.

        found: the external port of a conntrack entry the pair already has (a connection older
        than this daemon's state: a fresh start, a table reinstalled). Its translation stands
        whatever the plan says, so it is what the pair gets: 4500 keeps it, a port of the range
        is taken again (with its elements, so replies find the host), any other is left to
        the kernel and not recorded."""
        key = (lan, remote)
        p = self.port_of.get(key)
        if p is not None:
            self.seen[key] = now
            return p, []
        if len(self.port_of) >= self.max_pairs:
            return NATT_PORT if found is None else found, []  # the table is bounded: not recorded
        if found is not None:
            return self._found(lan, zone, remote, now, found)
        self.seen[key] = now
        others = [h for h in self.keepers.get(remote, {}) if h != lan]
        if not distinct or not others:
            return self._keep(lan, remote), []
        p = self._free_port(lan, remote)
        if p is None:
            self.exhausted += 1
            if now >= self._full_logged.get(remote, 0):
                self._full_logged[remote] = now + 60.0
                self.log("warning", "NAT-T ports %s towards %s all in use: %s keeps port 4500 (told apart by SPI)"
                         % (self.range_text(), remote, lan))
            return self._keep(lan, remote), []
        self._take(lan, remote, p, zone)
        self.allocated += 1
        self.log("info", "NAT-T %s -> %s: external port %d (%s keeps 4500)" % (lan, remote, p, others[0]))
        return p, self._ops("add", lan, remote, p, zone)

    def _found(self, lan, zone, remote, now, port):
        if port == NATT_PORT:
            self.seen[(lan, remote)] = now
            return self._keep(lan, remote), []
        if self.first <= port < self.first + self.count and self.owner(remote, port) is None:
            self._take(lan, remote, port, zone)
            self.seen[(lan, remote)] = now
            self.log("info", "NAT-T %s -> %s: external port %d taken again from its conntrack entry" % (lan, remote, port))
            return port, self._ops("add", lan, remote, port, zone)
        return port, []

    def touch(self, lan, remote, t):
        key = (lan, remote)
        if key in self.port_of and t > self.seen.get(key, t - 1):
            self.seen[key] = t

    def release(self, lan, remote):
        """Forget a pair; returns the ops deleting its elements."""
        key = (lan, remote)
        p = self.port_of.pop(key, None)
        self.seen.pop(key, None)
        if p is None:
            return []
        if p == NATT_PORT and key not in self.zone_of:
            k = self.keepers.get(remote, {})
            k.pop(lan, None)
            if not k:
                self.keepers.pop(remote, None)
            return []
        zone = self.zone_of.pop(key, None)
        d = self.owners.get(remote, {})
        d.pop(p, None)
        if not d:
            self.owners.pop(remote, None)
            self._full_logged.pop(remote, None)
        return self._ops("del", lan, remote, p, zone)

    def expire(self, now, hold, live):
        """Release pairs that `live` (lan, remote) -> bool says have no flow left and that saw
        no activity for `hold` seconds; returns ops."""
        ops = []
        for key in list(self.port_of):
            if not live(key[0], key[1]) and now - self.seen.get(key, 0) > hold:
                ops.extend(self.release(key[0], key[1]))
        return ops

    def release_all(self):
        ops = []
        for key in list(self.port_of):
            ops.extend(self.release(key[0], key[1]))
        return ops

    def adopt(self, natt_out, natt_in, zone_of_host, now):
        """Re-adopt the distinct ports a previous run left in the kernel.

        natt_out: [(lan_ip, remote_ip, port, comment)], natt_in: [(remote_ip, port, zone,
        comment)]; zone_of_host(lan_ip) -> the host's re-adopted zone (None: unknown host).
        Elements are taken in sorted order, so the result does not depend on how the kernel
        lists them. Returns (ops, adopted): deletes for what does not fit (not ours, unknown
        host, port outside the range or twice towards one server) and the natt_in elements a
        kept natt_out lacks."""
        ops = []
        adopted = 0
        inbound = {}
        for remote, port, zone, comment in sorted(natt_in, key=lambda e: (e[0], e[1])):
            inbound[(remote, port)] = (zone, comment)
        def agreed(e):  # two hosts on one port: the one natt_in names wins
            have = inbound.get((e[1], e[2]))
            return 0 if have is not None and have[0] == zone_of_host(e[0]) else 1

        for lan, remote, port, comment in sorted(natt_out, key=lambda e: (agreed(e), e[0], e[1])):
            zone = zone_of_host(lan)
            ok = (zone is not None and parse_natt_comment(comment) == (lan, remote, port)
                  and self.first <= port < self.first + self.count and self.owner(remote, port) is None
                  and (lan, remote) not in self.port_of)
            if not ok:
                ops.append(("del", NATT_OUT, (lan, remote)))
                continue
            self._take(lan, remote, port, zone)
            self.seen[(lan, remote)] = now
            adopted += 1
            have = inbound.pop((remote, port), None)
            if have is None or have[0] != zone or parse_natt_comment(have[1]) != (lan, remote, port):
                if have is not None:
                    ops.append(("del", NATT_IN, (remote, port)))
                ops.append(self._ops("add", lan, remote, port, zone)[1])
        for remote, port in sorted(inbound):
            ops.append(("del", NATT_IN, (remote, port)))
        return ops, adopted

    def adopt_keeper(self, lan, remote, now):
        """A re-adopted flow of lan to remote's 4500 without a distinct port: it keeps 4500."""
        if (lan, remote) not in self.port_of:
            self._keep(lan, remote)
            self.seen[(lan, remote)] = now
