"""decode_ip(): one IP packet in, one flat dict out, never an exception.

This is the per-packet entry point of the daemon (NFQUEUE hands over packets starting at the
IP header) and of `passthrough parse`. One pass over the headers, no regex, no copies beyond
the small slices that become text.

Every key of KEYS is always present; None means "not applicable / not reached".
  error     None or a short string; fields decoded before the problem stay filled in
  ipver src dst l4 sport dport frag frag_offset   (l4 is the protocol after IPv6 ext headers;
            frag: a fragment of any kind; non-first fragments stop at the IP header)
  proto     'ike' | 'natt-keepalive' | 'esp' | 'l2tp' | 'other'
            UDP 500 either side -> ike; UDP 4500 either side -> NAT-T demux (RFC 3948);
            UDP 1701 either side -> L2TP v2/v3; IP 50 -> esp; IP 115 -> L2TPv3
  ike_*     version, exchange (name), exchange_type, spi_i, spi_r (16 hex), msgid, flags,
            initiator/response (IKEv2 flags, None for v1), payloads (names; 'SK'/'SKF' or
            'encrypted' end the readable part), notify (names), nat_d, vendor_ids (hex), natt
  esp_*     spi (8 hex), seq, udp (True for ESP-in-UDP)
  l2tp_*    version, type ('SCCRQ'... 'ZLB', 'data', 'unknown(N)'), control, tunnel (v3: control
            connection id), session (v3 control over UDP: None; over IP: 0), ns, nr,
            assigned_tunnel (AVP 9 / v3 61), assigned_session (AVP 14 / v3 63), hidden
"""
from passthrough.proto import ip
from passthrough.proto.esp import parse_esp
from passthrough.proto.ike import parse_ike
from passthrough.proto.l2tp import parse_l2tp_ip, parse_l2tp_udp
from passthrough.proto.natt import parse_natt

PORT_IKE = 500
PORT_NATT = 4500
PORT_L2TP = 1701

# Every key is always present, so consumers can index without .get(); None = not applicable.
_EMPTY = {
    "error": None,
    "ipver": None, "src": None, "dst": None, "l4": None, "ttl": None,
    "sport": None, "dport": None, "frag": False, "frag_offset": 0,
    "ip_options": None, "ip6_ext": None,
    "proto": "other",
    "ike_version": None, "ike_exchange": None, "ike_exchange_type": None,
    "ike_spi_i": None, "ike_spi_r": None, "ike_msgid": None, "ike_flags": None,
    "ike_length": None, "ike_initiator": None, "ike_response": None,
    "ike_payloads": None, "ike_notify": None, "ike_nat_d": None, "ike_vendor_ids": None,
    "ike_natt": None,
    "esp_spi": None, "esp_seq": None, "esp_udp": None,
    "l2tp_version": None, "l2tp_type": None, "l2tp_control": None,
    "l2tp_tunnel": None, "l2tp_session": None, "l2tp_ns": None, "l2tp_nr": None,
    "l2tp_assigned_tunnel": None, "l2tp_assigned_session": None, "l2tp_hidden": None,
}

KEYS = sorted(_EMPTY)


def decode_ip(data):
    """Decode one IPv4/IPv6 packet; always returns a dict with every key of KEYS."""
    d = _EMPTY.copy()
    try:
        err = _decode(data, d)
    except Exception as e:  # a bug here must not take the packet path down
        err = "internal decoder error: %s" % (e,)
    if err:
        d["error"] = err
    return d


def _decode(data, d):
    if not data:
        return "empty packet"
    v = data[0] >> 4
    if v == 4:
        off, end, err = ip.parse_ipv4(data, d)
    elif v == 6:
        off, end, err = ip.parse_ipv6(data, d)
    else:
        return "not an IP packet (version %d)" % v
    if err:
        return err
    frag = d["frag"]
    if frag and d["frag_offset"]:
        return None  # later fragment: no L4 header in here
    l4 = d["l4"]
    if l4 == ip.PROTO_UDP:
        off, end, err = ip.parse_udp(data, off, end, d, frag)
        if err:
            return err
        sport = d["sport"]
        dport = d["dport"]
        if sport == PORT_IKE or dport == PORT_IKE:
            d["proto"] = "ike"
            d["ike_natt"] = False
            return parse_ike(data, off, end, d, frag)
        if sport == PORT_NATT or dport == PORT_NATT:
            return parse_natt(data, off, end, d, frag)
        if sport == PORT_L2TP or dport == PORT_L2TP:
            return parse_l2tp_udp(data, off, end, d, frag)
        return None
    if l4 == ip.PROTO_ESP:
        d["proto"] = "esp"
        return parse_esp(data, off, end, d, False)
    if l4 == ip.PROTO_L2TPV3:
        return parse_l2tp_ip(data, off, end, d, frag)
    if l4 == ip.PROTO_TCP:
        return ip.parse_tcp_ports(data, off, end, d, frag)
    return None
