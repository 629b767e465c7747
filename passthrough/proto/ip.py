"""IPv4 (RFC 791), IPv6 (RFC 8200) with its extension-header chain, and the UDP/TCP port fields.

Each parser fills the shared result dict and returns (payload_offset, payload_end, error).
Fragments (frag=True) stop at the L4 ports: a first fragment still carries them, later ones don't.
"""
import struct

from passthrough.compat import ip4_str, ip6_str

PROTO_HOPOPTS = 0
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_ESP = 50
PROTO_AH = 51
PROTO_NONE = 59
PROTO_DSTOPTS = 60
PROTO_L2TPV3 = 115

# IPv6 extension headers in the generic (next header, length in 8-octet units - 1) format.
# AH (51) is deliberately absent: for passthrough AH is a VPN protocol of its own, as in IPv4.
# 135 Mobility, 139 HIP, 140 Shim6 (RFC 7045 list).
_V6_EXT_GENERIC = (PROTO_HOPOPTS, PROTO_ROUTING, PROTO_DSTOPTS, 135, 139, 140)


def parse_ipv4(buf, d):
    n = len(buf)
    if n < 20:
        return 0, 0, "truncated IPv4 header"
    vihl = buf[0]
    hlen = (vihl & 0x0F) * 4
    if hlen < 20:
        return 0, 0, "bad IPv4 header length %d" % hlen
    if n < hlen:
        return 0, 0, "truncated IPv4 header"
    total, frag_word = struct.unpack_from("!H2xH", buf, 2)
    d["ipver"] = 4
    d["src"] = ip4_str(buf[12:16])
    d["dst"] = ip4_str(buf[16:20])
    d["l4"] = buf[9]
    d["ttl"] = buf[8]
    frag_off = (frag_word & 0x1FFF) * 8
    more = frag_word & 0x2000
    d["frag"] = bool(more or frag_off)
    d["frag_offset"] = frag_off
    if hlen > 20:
        err = _walk_ipv4_options(buf, 20, hlen, d)
        if err:
            return 0, 0, err
    if total == 0:
        total = n  # TSO/GSO packets handed up with a zero length field
    if total < hlen:
        return 0, 0, "bad IPv4 total length %d" % total
    if total > n:
        return 0, 0, "truncated IPv4 packet (%d of %d bytes)" % (n, total)
    return hlen, total, None


def _walk_ipv4_options(buf, off, end, d):
    """RFC 791 options: EOL (0) and NOP (1) are single octets, the rest are type-length-value."""
    opts = []
    d["ip_options"] = opts
    while off < end:
        kind = buf[off]
        if kind == 0:
            break
        if kind == 1:
            off += 1
            continue
        if off + 2 > end:
            return "truncated IPv4 option %d" % kind
        olen = buf[off + 1]
        if olen < 2 or off + olen > end:
            return "bad IPv4 option length %d (option %d)" % (olen, kind)
        opts.append(kind)
        off += olen
    return None


def parse_ipv6(buf, d):
    n = len(buf)
    if n < 40:
        return 0, 0, "truncated IPv6 header"
    plen = (buf[4] << 8) | buf[5]
    nh = buf[6]
    d["ipver"] = 6
    d["src"] = ip6_str(buf[8:24])
    d["dst"] = ip6_str(buf[24:40])
    d["ttl"] = buf[7]
    d["l4"] = nh
    if plen == 0 and nh == PROTO_HOPOPTS:
        end = n  # jumbogram (RFC 2675): the real length sits in a hop-by-hop option
    else:
        end = 40 + plen
        if end > n:
            return 0, 0, "truncated IPv6 packet (%d of %d bytes)" % (n, end)
    off = 40
    exts = []
    d["ip6_ext"] = exts
    while True:
        if nh == PROTO_FRAGMENT:
            if off + 8 > end:
                return 0, 0, "truncated IPv6 fragment header"
            exts.append(nh)
            frag_word = (buf[off + 2] << 8) | buf[off + 3]
            d["frag_offset"] = frag_word & 0xFFF8
            if frag_word & 0xFFF9:  # offset != 0 or M flag
                d["frag"] = True
            nh = buf[off]
            off += 8
            if frag_word & 0xFFF8:
                break  # later fragment: what follows is the middle of the payload
        elif nh in _V6_EXT_GENERIC:
            if off + 8 > end:
                return 0, 0, "truncated IPv6 extension header %d" % nh
            elen = (buf[off + 1] + 1) * 8
            if off + elen > end:
                return 0, 0, "truncated IPv6 extension header %d" % nh
            exts.append(nh)
            nh = buf[off]
            off += elen
        else:
            break
    d["l4"] = nh
    return off, end, None


def parse_udp(buf, off, end, d, partial):
    """Ports and length; returns the UDP payload span, trimmed to the UDP length."""
    if off + 8 > end:
        if partial and off + 4 <= end:
            d["sport"], d["dport"] = struct.unpack_from("!HH", buf, off)
            return off + 8, off + 8, None
        return 0, 0, "truncated UDP header"
    sport, dport, ulen = struct.unpack_from("!HHH", buf, off)
    d["sport"] = sport
    d["dport"] = dport
    if ulen < 8:
        if ulen == 0 and d["ipver"] == 6:
            return off + 8, end, None  # RFC 2675 jumbogram UDP
        return 0, 0, "bad UDP length %d" % ulen
    if off + ulen > end:
        if partial:
            return off + 8, end, None
        return 0, 0, "truncated UDP datagram (%d of %d bytes)" % (end - off, ulen)
    return off + 8, off + ulen, None


def parse_tcp_ports(buf, off, end, d, partial):
    if off + 4 > end:
        return "truncated TCP header"
    d["sport"], d["dport"] = struct.unpack_from("!HH", buf, off)
    if off + 20 > end and not partial:
        return "truncated TCP header"
    return None
