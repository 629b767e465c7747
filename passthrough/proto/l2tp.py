"""L2TPv2 (RFC 2661) and L2TPv3 (RFC 3931) headers and control-message AVPs.

L2TPv2 and L2TPv3-over-UDP share port 1701 and the first 16-bit word (T L x x S x O P x x x x Ver);
L2TPv3 over IP (protocol 115) starts with a 32-bit session ID where 0 marks a control message.
From the AVPs we keep the message type and the IDs a peer assigns itself, which are the keys
the router uses to tell tunnels apart.
"""
import struct

FLAG_T = 0x8000  # control message
FLAG_L = 0x4000  # length present
FLAG_S = 0x0800  # Ns/Nr present
FLAG_O = 0x0200  # offset size present (v2 data only)
FLAG_P = 0x0100  # priority (v2 data only)

AVP_M = 0x8000
AVP_H = 0x4000
AVP_LEN_MASK = 0x03FF

MESSAGE_TYPES = {
    1: "SCCRQ", 2: "SCCRP", 3: "SCCCN", 4: "StopCCN", 6: "HELLO",
    7: "OCRQ", 8: "OCRP", 9: "OCCN", 10: "ICRQ", 11: "ICRP", 12: "ICCN",
    14: "CDN", 15: "WEN", 16: "SLI",
    # RFC 3573, RFC 3931 (ACK), RFC 4951 (failover), RFC 4045 (multicast), RFC 5515 (CSU)
    17: "MDMST", 18: "SRRQ", 19: "SRRP", 20: "ACK", 21: "FSQ", 22: "FSR", 23: "MSRQ", 24: "MSRP",
    25: "MSE", 26: "MSI", 27: "MSEN", 28: "CSUN", 29: "CSURQ",
}

AVP_MESSAGE_TYPE = 0
AVP_ASSIGNED_TUNNEL_ID = 9        # v2, 16 bits
AVP_ASSIGNED_SESSION_ID = 14      # v2, 16 bits
AVP_ASSIGNED_CONTROL_CONN_ID = 61  # v3, 32 bits
AVP_LOCAL_SESSION_ID = 63         # v3, 32 bits


def message_type_name(mtype):
    name = MESSAGE_TYPES.get(mtype)
    return name if name is not None else "unknown(%d)" % mtype


def _start(d, version, control):
    d["proto"] = "l2tp"
    d["l2tp_version"] = version
    d["l2tp_control"] = control
    d["l2tp_hidden"] = False
    d["l2tp_type"] = None if control else "data"


def parse_l2tp_udp(buf, off, end, d, partial):
    """An L2TP packet in UDP (port 1701): v2, or v3 with the UDP header variant."""
    if off + 2 > end:
        d["proto"] = "l2tp"
        return "truncated L2TP header"
    flags = (buf[off] << 8) | buf[off + 1]
    ver = flags & 0x000F
    if ver == 2:
        return _parse_v2(buf, off, end, d, flags, partial)
    if ver == 3:
        if flags & FLAG_T:
            _start(d, 3, True)
            return _parse_v3_control(buf, off, end, d, flags, partial)
        _start(d, 3, False)
        if off + 8 > end:  # flags+version, reserved, session ID
            return "truncated L2TPv3 data header"
        d["l2tp_session"] = struct.unpack_from("!I", buf, off + 4)[0]
        return None
    d["proto"] = "l2tp"
    d["l2tp_control"] = bool(flags & FLAG_T)
    return "unsupported L2TP version %d" % ver


def parse_l2tp_ip(buf, off, end, d, partial):
    """L2TPv3 directly over IP (protocol 115, RFC 3931 4.1.1.1)."""
    if off + 4 > end:
        d["proto"] = "l2tp"
        d["l2tp_version"] = 3
        return "truncated L2TPv3 session ID"
    session = struct.unpack_from("!I", buf, off)[0]
    if session != 0:
        _start(d, 3, False)
        d["l2tp_session"] = session
        return None
    _start(d, 3, True)
    d["l2tp_session"] = 0
    if off + 6 > end:
        return "truncated L2TPv3 control header"
    flags = (buf[off + 4] << 8) | buf[off + 5]
    if not flags & FLAG_T:
        return "L2TPv3 control message without T bit"
    if flags & 0x000F != 3:
        return "unsupported L2TP version %d" % (flags & 0x000F)
    return _parse_v3_control(buf, off + 4, end, d, flags, partial)


def _parse_v2(buf, off, end, d, flags, partial):
    control = bool(flags & FLAG_T)
    _start(d, 2, control)
    if control and (flags & (FLAG_L | FLAG_S)) != (FLAG_L | FLAG_S):
        return "bad L2TP control header (L and S bits required)"
    p = off + 2
    mend = end
    if flags & FLAG_L:
        if p + 2 > end:
            return "truncated L2TP header"
        length = (buf[p] << 8) | buf[p + 1]
        p += 2
        if off + length <= end:
            mend = off + length
        elif not partial:
            return "truncated L2TP message (%d of %d bytes)" % (end - off, length)
    if p + 4 > mend:
        return "truncated L2TP header"
    d["l2tp_tunnel"], d["l2tp_session"] = struct.unpack_from("!HH", buf, p)
    p += 4
    if flags & FLAG_S:
        if p + 4 > mend:
            return "truncated L2TP header"
        d["l2tp_ns"], d["l2tp_nr"] = struct.unpack_from("!HH", buf, p)
        p += 4
    if flags & FLAG_O:
        if control:
            return "bad L2TP control header (O bit set)"
        if p + 2 > mend:
            return "truncated L2TP header"
        p += 2 + ((buf[p] << 8) | buf[p + 1])
        if p > mend:
            return "bad L2TP offset size"
    if not control:
        return None
    return _walk_avps(buf, p, mend, d, 2, partial)


def _parse_v3_control(buf, off, end, d, flags, partial):
    # flags+version (2), Length (2), Control Connection ID (4), Ns (2), Nr (2)
    if (flags & (FLAG_L | FLAG_S)) != (FLAG_L | FLAG_S):
        return "bad L2TP control header (L and S bits required)"
    if off + 12 > end:
        return "truncated L2TPv3 control header"
    length, ccid, ns, nr = struct.unpack_from("!HIHH", buf, off + 2)
    d["l2tp_tunnel"] = ccid
    d["l2tp_ns"] = ns
    d["l2tp_nr"] = nr
    if length < 12:
        return "bad L2TP length %d" % length
    mend = off + length
    if mend > end:
        if not partial:
            return "truncated L2TP message (%d of %d bytes)" % (end - off, length)
        mend = end
    return _walk_avps(buf, off + 12, mend, d, 3, partial)


def _walk_avps(buf, p, mend, d, version, partial):
    """AVP: M H rsvd(4) Length(10) | Vendor ID | Attribute Type | value. Message Type comes first."""
    if p >= mend:
        d["l2tp_type"] = "ZLB"  # zero-length body: a bare acknowledgement
        return None
    first = True
    while p < mend:
        if p + 6 > mend:
            if partial:
                return None
            return "truncated L2TP AVP"
        word, vendor, atype = struct.unpack_from("!HHH", buf, p)
        alen = word & AVP_LEN_MASK
        if alen < 6:
            return "bad L2TP AVP length %d" % alen
        if p + alen > mend:
            if partial:
                return None
            return "bad L2TP AVP length %d" % alen
        hidden = word & AVP_H
        if hidden:
            d["l2tp_hidden"] = True
        v = p + 6
        if first:
            if vendor != 0 or atype != AVP_MESSAGE_TYPE:
                return "L2TP control message does not start with a Message Type AVP"
            if hidden:
                return "hidden L2TP Message Type AVP"
            if alen != 8:
                return "bad L2TP Message Type AVP length %d" % alen
            d["l2tp_type"] = message_type_name((buf[v] << 8) | buf[v + 1])
            first = False
        elif vendor == 0 and not hidden:
            if version == 2:
                if atype == AVP_ASSIGNED_TUNNEL_ID or atype == AVP_ASSIGNED_SESSION_ID:
                    if alen != 8:
                        return "bad L2TP AVP %d length %d" % (atype, alen)
                    val = (buf[v] << 8) | buf[v + 1]
                    if atype == AVP_ASSIGNED_TUNNEL_ID:
                        d["l2tp_assigned_tunnel"] = val
                    else:
                        d["l2tp_assigned_session"] = val
            elif atype == AVP_ASSIGNED_CONTROL_CONN_ID or atype == AVP_LOCAL_SESSION_ID:
                if alen != 10:
                    return "bad L2TP AVP %d length %d" % (atype, alen)
                val = struct.unpack_from("!I", buf, v)[0]
                if atype == AVP_ASSIGNED_CONTROL_CONN_ID:
                    d["l2tp_assigned_tunnel"] = val
                else:
                    d["l2tp_assigned_session"] = val
        p += alen
    return None
