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
