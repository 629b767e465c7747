"""nftables text for the fast path and the policy: pure functions, no I/O.

Two tables, so that policy outlives the daemon (fail-closed) while queueing fails open:
- `ip passthrough`: classify, its one per-packet hook (raw-10, -310, before conntrack at -200):
  everything that cannot be VPN leaves at its head (GATE); known data is zoned by one lookup;
  control and first packets are queued, and the daemon's verdict (NF_REPEAT with mark_bit set)
  runs classify again, which now finds what the daemon learned or zones the packet in steer_out
  / steer_in (the host's zone, the fallback maps). nat_prerouting (first packet of a connection
  only: VPN UDP conntrack timeout, PPTP helper, fallback map, dnat of new inbound connections in
  a host's zone to that host), nat_postrouting (first packet only: a NAT-T flow given a distinct
  external port by option natt_ports, nat/mapping.NattPorts). Priorities: nat -110 (before fw4's
  dstnat at -100), nat_postrouting srcnat-1 (99: the first nat chain that translates a
  connection wins, so it goes before fw4's masquerade at 100). Queueing: the nft `queue`
  statement, or on kernels without nft_queue the xt NFQUEUE target in chain xt_queue
  (nat/nftnetlink.py). Only while the daemon's heartbeat element in set `alive` lives: a dead
  daemon's packets are zoned by the fallback maps at once, not queued to nobody.
- `inet passthrough_policy`: forward-hook drops for families switched off.

Payload offsets (@th = transport header, bits): UDP payload starts at 64. IKE initiator SPI is
the first 8 bytes of IKE (@th,64,64 on 500; after the 4-byte non-ESP marker on 4500:
@th,96,64); ESP SPI is @th,0,32 raw and @th,64,32 in UDP (RFC 3948); an L2TPv2 header keeps the
tunnel id at byte 4 when the L(ength) bit is set (all control messages), else at byte 2.
"""
from nat.mapping import LAN_ZONE, ZONE_LAN, IKE_ZONE, ESP_ZONE, ESP_OUT, L2TP_ZONE, NATT_OUT, NATT_IN

TABLE = "passthrough"
POLICY_TABLE = "passthrough_policy"
VPN_UDP_PORTS = (500, 4500, 1701)  # IKE, NAT-T, L2TP
VPN_UDP = "{ %s }" % ", ".join(str(p) for p in VPN_UDP_PORTS)
FALLBACK_UDP = "fallback_udp"
FALLBACK_ESP = "fallback_esp"

KEY_TYPES = {
    LAN_ZONE: "typeof ip saddr : ct zone",
    ESP_OUT: "typeof ip saddr . @th,0,32 : ct zone",
    ZONE_LAN: "typeof ct zone : ip daddr",
    IKE_ZONE: "typeof ip saddr . @th,64,64 : ct zone",
    ESP_ZONE: "typeof ip saddr . @th,0,32 : ct zone",
    L2TP_ZONE: "typeof ip saddr . @th,96,16 : ct zone",
    NATT_OUT: "typeof ip saddr . ip daddr : udp sport",
    NATT_IN: "typeof ip saddr . udp dport : ct zone",
}
# How each map's key parts and value sit in the kernel's registers, for the daemon's netlink
# read of them (nat/nftnetlink.map_elements); in step with KEY_TYPES (tests/unit checks).
ELEMENT_LAYOUT = {
    LAN_ZONE: (("ip",), "zone"),
    ESP_OUT: (("ip", "be32"), "zone"),
    ZONE_LAN: (("zone",), "ip"),
    IKE_ZONE: (("ip", "be64"), "zone"),
    ESP_ZONE: (("ip", "be32"), "zone"),
    L2TP_ZONE: (("ip", "be16"), "zone"),
    NATT_OUT: (("ip", "ip"), "be16"),
    NATT_IN: (("ip", "be16"), "zone"),
}
# Key-only twin of each demux map, for the "not known yet" tests in classify: kernels before 6.5
# refuse a lookup on a map that does not use its value ("nf_tables: relax set/map validation
# checks"), e.g. OpenWrt 23.05's 5.15 and Debian 12's 6.1. render_op keeps the twins in step.
KEYSET = {LAN_ZONE: LAN_ZONE + "_k", ESP_OUT: ESP_OUT + "_k", IKE_ZONE: IKE_ZONE + "_k",
          ESP_ZONE: ESP_ZONE + "_k", L2TP_ZONE: L2TP_ZONE + "_k", NATT_IN: NATT_IN + "_k"}
# Per-element packet counters (the daemon's idle detection for inbound keys) only where they are
# read: a counter is one more expression on every hit.
COUNTED = (IKE_ZONE, ESP_ZONE, L2TP_ZONE)

# Queue protection for WAN packets with unknown keys (measured, tests/lab/test_floods.py: a burst
# of 20000 random-key packets overflowed the 4096-packet queue and legit outbound IKE messages,
# queued behind it, were lost). Beyond these rates WAN packets skip the queue instead (accepted,
# steered by whatever the kernel knows: fail-open), per source address and in total, so a flood
# from the WAN can never fill the queue that LAN hosts' control packets need.
# Rates: options queue_limit_source / queue_limit_total (pkt/s), bursts of twice that.
FLOOD_SET = "flood_src"

# Per family: forwarded traffic dropped when its passthrough toggle is off.
POLICY_DROPS = {
    "l2tp": ["udp dport 1701", "udp sport 1701", "meta l4proto 115"],  # L2TPv2/v3 over UDP, L2TPv3 over IP
    "ipsec": ["udp dport { 500, 4500 }", "udp sport { 500, 4500 }", "meta l4proto { esp, ah }"],
    "pptp": ["tcp dport 1723", "tcp sport 1723", "meta l4proto gre"],
}


# The head of classify: everything that cannot be VPN leaves the hook here, before any per-device
# or per-protocol rule. Cheapest test first: TCP, the bulk, after one compare (PPTP's control
# connection needs nothing here: its helper is attached in nat_prerouting, for a connection's
# first packet only); then UDP with both ports outside 500-4500, where the three VPN ports lie
# (DNS, QUIC/HTTPS, NTP, ephemeral ports: most of it), by two range compares; then UDP with no
# VPN port on either side by six compares; then what is neither UDP nor ESP. Compares, no set
# lookups: the two port sets this head had cost plain UDP 220-380 ns a packet here, and each
# compare is an expression more (bench/README.md). The `& 0xffff` is needed: nft 1.0.6 merges a
# plain `sport != 1701 dport != 500` into one 32-bit "!=", true when either differs, which would
# let IKE to port 500 pass unseen (`nft list` prints the rule without the mask: reload it from
# `passthrough render`, never from a listing). Ranges are not merged (`nft --debug=netlink`).
VPN_PORT_SPAN = "%d-%d" % (min(VPN_UDP_PORTS), max(VPN_UDP_PORTS))
NOT_VPN_UDP = " ".join("udp %s & 0xffff != %d" % (field, port)
                       for field in ("dport", "sport") for port in VPN_UDP_PORTS)
GATE = ("meta l4proto tcp accept", "udp dport != %s udp sport != %s accept" % (VPN_PORT_SPAN, VPN_PORT_SPAN),
        NOT_VPN_UDP + " accept", "meta l4proto != udp meta l4proto != esp accept")


def quote_dev(name):
    return '"%s"' % name


ALIVE_SET = "alive"  # the daemon's heartbeat: one element (4, `ip version`) with a timeout
ALIVE_TIMEOUT = 5    # seconds; the daemon renews it every second (a busy loop may stall)
XT_QUEUE = "xt_queue"  # holds the xt NFQUEUE rule (backend "xt"); never flushed by a reload


def queue_stmt(cfg, backend):
    """The verdict that hands a packet to the daemon (fails open when nobody listens)."""
    if backend == "nft":
        if cfg.queue_count > 1:
            return "queue flags bypass,fanout to %d-%d" % (cfg.queue_num, cfg.queue_num + cfg.queue_count - 1)
        return "queue flags bypass to %d" % cfg.queue_num
    # No nft_queue in the kernel: the xt NFQUEUE target (nat/nftnetlink.py adds it).
    return "goto %s" % XT_QUEUE


def _vpn_to(chain, ipsec):
    """Rules sending the VPN packets that are left (not known data) on to `chain`."""
    rules = ["udp dport %s goto %s" % (VPN_UDP, chain), "udp sport %s goto %s" % (VPN_UDP, chain)]
    if ipsec:
        rules.append("meta l4proto esp goto %s" % chain)
    return rules


def render_fastpath(cfg, backend, prefilter=None):
    """The fast-path table. Per-packet cost matters: every forwarded packet crosses classify,
    and on a retpoline kernel each nft expression costs 5-50 ns, a set lookup 50-100 ns
    (bench/README.md). So other traffic leaves at the GATE, a known data packet does one map
    lookup (key -> zone, then `accept`, which ends the hook), and only control packets and
    unknown keys go further; the per-connection work (ct timeout, pptp helper, fallback map)
    sits in the nat chain, which runs only for a connection's first packet. Every way to the
    queue passes a test of mark_bit first: a packet the daemon has answered is zoned, never
    queued again. Measured in the lab (bench/run.py): the first layout, a mangle hook doing a map
    update per packet and a dozen `iifname` rules per chain, cost 30-40% of the kernel-only rate.

    prefilter: the ifindexes where the BPF offload program (nat/bpf/offload.c) is attached; it
    sets the steer bit on every packet that may be VPN and goes on to the stack. Classify then
    lets everything else (TCP, ICMP, other UDP) from those ports go after one mark test, and
    clears the bit on the rest. By ifindex, not name: a port re-created under the same name (PPPoE
    reconnect) has no program until the daemon attaches one, and must not skip classify.
    """
    lan, wan = quote_dev(cfg.lan_device), quote_dev(cfg.wan_device)
    q = queue_stmt(cfg, backend)
    ipsec = cfg.kind_enabled("ipsec")
    l2tp = cfg.kind_enabled("l2tp")
    out = ["table ip %s {" % TABLE]
    t = cfg.udp_timeout
    out.append("\tct timeout vpn-udp { protocol udp; l3proto ip; policy = { unreplied : %d, replied : %d }; }" % (t, t))
    out.append('\tct helper pptp { type "pptp" protocol tcp; l3proto ip; }')
    for name in (LAN_ZONE, ZONE_LAN, ESP_OUT, IKE_ZONE, ESP_ZONE, L2TP_ZONE, NATT_OUT, NATT_IN):
        extra = " counter;" if name in COUNTED else ""
        out.append("\tmap %s { %s;%s }" % (name, KEY_TYPES[name], extra))
    out.append("\tset %s { typeof ip saddr; size 65535; flags dynamic,timeout; timeout 60s; }" % FLOOD_SET)
    out.append("\tset %s { typeof ip version; flags timeout; }" % ALIVE_SET)
    for name in sorted(KEYSET):
        out.append("\tset %s { %s; }" % (KEYSET[name], KEY_TYPES[name].split(" : ")[0]))
    # Kernel-learned fallback (remote, ports) -> zone of the host that last sent there: the
    # plain-NAT behaviour for keys nobody has learned yet (daemon dead or not yet answered).
    out.append("\tmap %s { typeof ip saddr . udp sport . udp dport : ct zone; flags dynamic,timeout; timeout %ds; }"
               % (FALLBACK_UDP, cfg.flow_timeout))
    out.append("\tmap %s { typeof ip saddr : ct zone; flags dynamic,timeout; timeout %ds; }" % (FALLBACK_ESP, cfg.flow_timeout))

    out.append("\tchain classify {")
    out.append("\t\ttype filter hook prerouting priority -310; policy accept;")
    out.append("\t\t" + GATE[0])  # TCP first, before the prefilter too: one compare
    if prefilter:
        for ifindex in prefilter:
            # (a packet back from the daemon carries mark_bit instead: the steer bit is gone)
            out.append("\t\tmeta iif %d meta mark & 0x%08x == 0 accept" % (ifindex, cfg.steer_mark_bit | cfg.mark_bit))
        out.append("\t\tmeta mark set meta mark & 0x%08x" % (0xFFFFFFFF ^ cfg.steer_mark_bit))
    out.extend("\t\t" + r for r in GATE[1:])
    out.append("\t\tiifname %s goto classify_out" % lan)
    out.append("\t\tiifname %s goto classify_in" % wan)
    out.append("\t}")

    seen = "meta mark & 0x%08x != 0" % cfg.mark_bit  # answered by the daemon (NF_REPEAT)
    if backend != "nft":
        out.append("\tchain %s {\n\t}" % XT_QUEUE)
    alive = "ip version @%s" % ALIVE_SET
    zone_lan = "ct zone set ip saddr map @%s" % LAN_ZONE
    co = []
    # Data of known flows first, one map lookup each: zoned right here and out of the chain.
    # (esp_out holds the host's zone per outbound SPI; SPI 0, the non-ESP marker, is never a key.)
    # A failed lookup ends the rule, so unknown keys fall through to the rules below.
    if ipsec:
        co.append("udp dport 4500 ct zone set ip saddr . @th,64,32 map @%s accept" % ESP_OUT)
        co.append("meta l4proto esp ct zone set ip saddr . @th,0,32 map @%s accept" % ESP_OUT)
    co.append("udp dport 1701 @th,64,8 & 0x80 == 0x00 %s accept" % zone_lan)
    co.extend(_vpn_to("classify_out_vpn", ipsec))
    out.append("\tchain classify_out {")
    out.extend("\t\t" + r for r in co)
    out.append("\t}")

    # After the daemon's answer, or with nothing to learn: the host's zone (steer_out).
    cv = ["%s goto steer_out" % seen]
    qo = "goto queue_out"
    # First VPN packet of a LAN host: the daemon gives the host its zone.
    cv.append("ip saddr != @%s %s" % (KEYSET[LAN_ZONE], qo))
    if ipsec:
        cv.append("udp dport 500 %s" % qo)  # IKE: learn initiator SPIs
        cv.append("udp dport 4500 udp length > 12 @th,64,32 0 %s" % qo)  # IKE after non-ESP marker
        cv.append("udp dport 4500 udp length > 16 @th,64,32 != 0 ip saddr . @th,64,32 != @%s %s" % (KEYSET[ESP_OUT], qo))
        cv.append("meta l4proto esp ip saddr . @th,0,32 != @%s %s" % (KEYSET[ESP_OUT], qo))
    if l2tp:
        cv.append("udp dport 1701 @th,64,8 & 0x80 == 0x80 %s" % qo)  # control (T bit)
        cv.append("udp sport 1701 @th,64,8 & 0x80 == 0x80 %s" % qo)  # LNS moved to another port
    cv.append("goto steer_out")
    out.append("\tchain classify_out_vpn {")
    out.extend("\t\t" + r for r in cv)
    out.append("\t}")
    out.append("\tchain queue_out {")
    out.append("\t\t%s %s" % (alive, q))
    out.append("\t\tgoto steer_out")
    out.append("\t}")

    ci = []
    qi = "goto queue_in"  # through the flood limits to the queue
    # Data of known flows first (zoned here, out of the chain); then what must be learned.
    if ipsec:
        ci.append("udp dport 4500 ct zone set ip saddr . @th,64,32 map @%s accept" % ESP_ZONE)
        ci.append("meta l4proto esp ct zone set ip saddr . @th,0,32 map @%s accept" % ESP_ZONE)
    if ipsec:
        # From the server's 4500 to another port of ours: maybe a distinct NAT-T port (natt_ports)
        ci.append("udp sport 4500 udp dport != 4500 goto classify_in_natt")
    if l2tp:
        ci.append("udp dport 1701 @th,64,8 & 0xc0 == 0x00 ct zone set ip saddr . @th,80,16 map @%s accept" % L2TP_ZONE)
    ci.extend(_vpn_to("classify_in_vpn", ipsec))
    out.append("\tchain classify_in {")
    out.extend("\t\t" + r for r in ci)
    out.append("\t}")

    if ipsec:
        # Replies to a host's distinct NAT-T port: the port names the host. Known ESP data is
        # zoned by its SPI all the same (esp_zone counts it: the flow's activity); a new SPI is
        # queued, so the daemon pairs it with this port's host and the flow can be offloaded;
        # the rest (IKE, keepalives) by the port. A port that is not ours goes the usual way.
        cn = ["ip saddr . udp dport != @%s goto classify_in_vpn" % KEYSET[NATT_IN]]
        cn.append("udp length > 16 @th,64,32 != 0 ct zone set ip saddr . @th,64,32 map @%s accept" % ESP_ZONE)
        cn.append("udp length > 16 @th,64,32 != 0 meta mark & 0x%08x == 0 goto queue_in" % cfg.mark_bit)
        cn.append("goto steer_in")
        out.append("\tchain classify_in_natt {")
        out.extend("\t\t" + r for r in cn)
        out.append("\t}")

    cw = ["%s goto steer_in" % seen]
    if ipsec:
        cw.append("udp dport 500 udp length > 24 ip saddr . @th,64,64 != @%s %s" % (KEYSET[IKE_ZONE], qi))
        cw.append("udp dport 4500 udp length > 16 @th,64,32 != 0 ip saddr . @th,64,32 != @%s %s" % (KEYSET[ESP_ZONE], qi))
        cw.append("meta l4proto esp ip saddr . @th,0,32 != @%s %s" % (KEYSET[ESP_ZONE], qi))
        cw.append("udp dport 4500 udp length > 28 @th,64,32 0 ip saddr . @th,96,64 != @%s %s" % (KEYSET[IKE_ZONE], qi))
    if l2tp:
        cw.append("udp dport 1701 @th,64,8 & 0xc0 == 0x00 ip saddr . @th,80,16 != @%s %s" % (KEYSET[L2TP_ZONE], qi))
        cw.append("udp dport 1701 @th,64,8 & 0x80 == 0x80 %s" % qi)
        cw.append("udp dport 1701 @th,64,8 & 0xc0 == 0x40 ip saddr . @th,96,16 != @%s %s" % (KEYSET[L2TP_ZONE], qi))
    cw.append("goto steer_in")
    out.append("\tchain classify_in_vpn {")
    out.extend("\t\t" + r for r in cw)
    out.append("\t}")
    out.append("\tchain queue_in {")
    out.append("\t\tupdate @%s { ip saddr limit rate over %d/second burst %d packets } goto steer_in" % (
        FLOOD_SET, cfg.queue_limit_source, 2 * cfg.queue_limit_source))
    out.append("\t\tlimit rate over %d/second burst %d packets goto steer_in" % (
        cfg.queue_limit_total, 2 * cfg.queue_limit_total))
    out.append("\t\t%s %s" % (alive, q))
    out.append("\t\tgoto steer_in")
    out.append("\t}")
    clear = "meta mark set meta mark & 0x%08x" % (0xFFFFFFFF ^ cfg.mark_bit)

    # LAN -> WAN: the zone of the LAN source. Control packets (IKE, NAT-T keepalives, L2TP
    # control: rare, but at least every minute on a live tunnel) also refresh the fallback map
    # (`ct zone` here reads the zone just set on the packet's conntrack template).
    fb_udp = "update @%s { ip daddr . udp dport . udp sport : ct zone }" % FALLBACK_UDP
    fb_esp = "update @%s { ip daddr : ct zone }" % FALLBACK_ESP
    so = [clear]
    so.append("udp dport 4500 @th,64,32 != 0 %s accept" % zone_lan)  # ESP-in-UDP data
    so.append("udp dport 1701 @th,64,8 & 0x80 == 0x00 %s accept" % zone_lan)  # L2TP data
    so.append("meta l4proto esp %s accept" % zone_lan)
    so.append("udp dport 500 %s %s %s accept" % (zone_lan, fb_udp, fb_esp))
    so.append("udp dport %s %s %s accept" % (VPN_UDP, zone_lan, fb_udp))
    so.append("udp sport %s %s %s accept" % (VPN_UDP, zone_lan, fb_udp))
    out.append("\tchain steer_out {")
    out.extend("\t\t" + r for r in so)
    out.append("\t}")

    # WAN -> LAN: the zone learned for the packet's demux key; the fallback map last (only when
    # no exact key matched: `accept` ends the chain after the first zone set).
    si = [clear]
    # A distinct NAT-T port first: the port decides (queued new SPIs, flood-limited packets).
    si.append("udp sport 4500 udp dport != 4500 ct zone set ip saddr . udp dport map @%s accept" % NATT_IN)
    si.append("udp dport 4500 @th,64,32 != 0 ct zone set ip saddr . @th,64,32 map @%s accept" % ESP_ZONE)
    si.append("meta l4proto esp ct zone set ip saddr . @th,0,32 map @%s accept" % ESP_ZONE)
    si.append("udp dport 1701 @th,64,8 & 0x40 == 0x00 ct zone set ip saddr . @th,80,16 map @%s accept" % L2TP_ZONE)
    si.append("udp dport 1701 @th,64,8 & 0x40 == 0x40 ct zone set ip saddr . @th,96,16 map @%s accept" % L2TP_ZONE)
    si.append("udp dport 500 ct zone set ip saddr . @th,64,64 map @%s accept" % IKE_ZONE)
    si.append("udp dport 4500 @th,64,32 0 ct zone set ip saddr . @th,96,64 map @%s accept" % IKE_ZONE)
    si.append("udp dport %s ct zone set ip saddr . udp sport . udp dport map @%s accept" % (VPN_UDP, FALLBACK_UDP))
    si.append("udp sport %s ct zone set ip saddr . udp sport . udp dport map @%s accept" % (VPN_UDP, FALLBACK_UDP))
    si.append("meta l4proto esp ct zone set ip saddr map @%s" % FALLBACK_ESP)
    out.append("\tchain steer_in {")
    out.extend("\t\t" + r for r in si)
    out.append("\t}")

    # First packet of a connection only (nat chains are not run for established ones).
    out.append("\tchain nat_prerouting {")
    out.append("\t\ttype nat hook prerouting priority -110; policy accept;")
    # Kernel default UDP timeout (30 s) is shorter than L2TP's 60 s HELLO: tunnels would die.
    out.append("\t\tudp dport %s ct timeout set \"vpn-udp\"" % VPN_UDP)
    out.append("\t\tudp sport %s ct timeout set \"vpn-udp\"" % VPN_UDP)
    out.append("\t\tiifname %s udp sport %s ct zone != 0 %s" % (lan, VPN_UDP, fb_udp))
    out.append("\t\tiifname %s udp dport %s ct zone != 0 %s" % (lan, VPN_UDP, fb_udp))
    out.append("\t\tiifname %s meta l4proto esp ct zone != 0 %s" % (lan, fb_esp))
    if cfg.kind_enabled("pptp"):
        out.append("\t\tiifname %s tcp dport 1723 ct helper set \"pptp\"" % lan)
    out.append("\t\tiifname %s ct zone != 0 dnat ip to ct zone map @%s" % (wan, ZONE_LAN))
    out.append("\t}")
    # First packet of a host's NAT-T connection whose (host, server) pair the daemon gave a
    # distinct port: masquerade to that port. No element (the first host, preserve mode): the
    # lookup fails, the rule ends and fw4's masquerade keeps 4500 in the host's zone.
    out.append("\tchain nat_postrouting {")
    out.append("\t\ttype nat hook postrouting priority 99; policy accept;")
    out.append("\t\toifname %s udp sport 4500 udp dport 4500 ct zone != 0 masquerade to :ip saddr . ip daddr map @%s"
               % (wan, NATT_OUT))
    out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


# Chains of older layouts: reload_chains deletes them when a kept table still has them.
FASTPATH_CHAINS = ("classify", "classify_out", "classify_out_vpn", "queue_out", "classify_in", "classify_in_natt",
                   "classify_in_vpn", "queue_in", "steer_out", "steer_in", "nat_prerouting",
                   "nat_postrouting", XT_QUEUE)


def render_policy(cfg):
    """The policy table: drops for every family whose passthrough is off."""
    drops = []
    for fam in ("l2tp", "ipsec", "pptp"):
        if cfg.enabled and not cfg.kind_enabled(fam):
            for match in POLICY_DROPS[fam]:
                drops.append('\t\t%s counter drop comment "%s_passthrough off"' % (match, fam))
    out = ["table inet %s {" % POLICY_TABLE]
    if drops:  # no drops, no hook: an empty base chain would still cost every forwarded packet
        out.append("\tchain forward {")
        out.append("\t\ttype filter hook forward priority -5; policy accept;")
        out.extend(drops)
        out.append("\t}")
    out.append("}")
    return "\n".join(out) + "\n"


def replace_table(family, name, body):
    """A transaction that (re)creates a table atomically: create-if-missing, delete, recreate."""
    return "table %s %s {}\ndelete table %s %s\n%s" % (family, name, family, name, body)


def _key_text(name, key):
    ip = key[0]
    if name == LAN_ZONE:
        return ip
    if name == ZONE_LAN:
        return str(key[0])
    if name == IKE_ZONE:
        return "%s . 0x%016x" % (ip, key[1])
    if name in (ESP_ZONE, ESP_OUT):
        return "%s . 0x%08x" % (ip, key[1])
    if name in (L2TP_ZONE, NATT_IN):
        return "%s . %d" % (ip, key[1])
    if name == NATT_OUT:
        return "%s . %s" % (ip, key[1])
    raise ValueError("unknown map %r" % name)


def render_op(op):
    """Element command(s) for an op tuple from nat/mapping.py (op[4], if any, is a comment);
    a demux map's key-only twin set gets the same add/delete on the next line."""
    verb, name, key = op[0], op[1], op[2]
    comment = op[4] if len(op) > 4 else None
    k = _key_text(name, key)
    twin = ""
    if name in KEYSET:
        twin = "\n%s element ip %s %s { %s }" % ("delete" if verb == "del" else "add", TABLE, KEYSET[name], k)
    if verb == "del":
        return "delete element ip %s %s { %s }" % (TABLE, name, k) + twin
    if comment:
        k += ' comment "%s"' % comment.replace('"', "")
    value = op[3] if len(op) > 3 else None
    if value is None:
        return "add element ip %s %s { %s }" % (TABLE, name, k) + twin
    return "add element ip %s %s { %s : %s }" % (TABLE, name, k, value) + twin


def flowtables_of(data):
    """[(family, table, name, [devices])] from `nft -j list flowtables` (its "nftables" list)."""
    out = []
    for item in data or ():
        ft = item.get("flowtable") if isinstance(item, dict) else None
        if not isinstance(ft, dict):
            continue
        devs = ft.get("dev", [])
        devs = [devs] if isinstance(devs, str) else list(devs)
        out.append((ft.get("family", "?"), ft.get("table", "?"), ft.get("name", "?"), devs))
    return out


def flowtable_warning(flowtables):
    """The admin's warning for nft flowtables beside passthrough (fw4's software flow offloading,
    option flow_offloading in /etc/config/firewall), or None. A flowtable entry is keyed by
    addresses, ports and protocol but not by conntrack zone (tc's act_ct keeps a flowtable per
    zone for this reason), and fw4 offloads every established UDP connection: two LAN hosts'
    connections to one server that share their outside ports (L2TP 1701, IKE 500, NAT-T 4500
    with natt_ports 'preserve') have one reply tuple, so once the first is offloaded the
    flowtable hands the second host's inbound packets to the first, before passthrough's
    classify sees them."""
    if not flowtables:
        return None
    names = ", ".join("%s %s %s (%s)" % (fam, table, name, " ".join(devs) or "no devices")
                      for fam, table, name, devs in flowtables)
    return ("nft flowtable present: %s. Flowtable entries carry no conntrack zone: L2TP, IKE or "
            "preserved-port NAT-T connections of two LAN hosts to one server can reach the wrong host "
            "once offloaded. passthrough's own offload (option offload) already carries VPN data; "
            "switch software flow offloading off (uci set firewall.@defaults[0].flow_offloading=0)"
            % names)
