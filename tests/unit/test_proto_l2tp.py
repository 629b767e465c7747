# micropython: run
"""L2TPv2 (RFC 2661) and L2TPv3 (RFC 3931) parsing (passthrough.proto.l2tp) on hand-built bytes."""
import struct

from passthrough.proto import l2tp
from passthrough.proto.decode import decode_ip

CTRL_V2 = 0xC802  # T L S, version 2
CTRL_V3 = 0xC803


def avp(atype, value, hidden=False, mandatory=True, vendor=0):
    flags = (0x8000 if mandatory else 0) | (0x4000 if hidden else 0)
    return struct.pack("!HHH", flags | (6 + len(value)), vendor, atype) + value


def mtype(n):
    return avp(0, struct.pack("!H", n))


def ctrl_v2(tunnel, session, ns, nr, avps):
    return struct.pack("!HHHHHH", CTRL_V2, 12 + len(avps), tunnel, session, ns, nr) + avps


def ctrl_v3(ccid, ns, nr, avps):
    return struct.pack("!HHIHH", CTRL_V3, 12 + len(avps), ccid, ns, nr) + avps


def fresh():
    d = decode_ip(b"\x00")
    d["error"] = None
    return d


def udp_parse(buf, partial=False):
    d = fresh()
    return d, l2tp.parse_l2tp_udp(buf, 0, len(buf), d, partial)


def ip_parse(buf, partial=False):
    d = fresh()
    return d, l2tp.parse_l2tp_ip(buf, 0, len(buf), d, partial)


def sccrq():
    return ctrl_v2(0, 0, 0, 0, mtype(1) + avp(2, b"\x01\x00") + avp(7, b"lns.example") +
                   avp(9, struct.pack("!H", 0x1234)) + avp(10, b"\x00\x04"))


def test_sccrq():
    d, err = udp_parse(sccrq())
    assert err is None
    assert d["proto"] == "l2tp" and d["l2tp_version"] == 2 and d["l2tp_control"] is True
    assert d["l2tp_type"] == "SCCRQ"
    assert d["l2tp_tunnel"] == 0 and d["l2tp_session"] == 0
    assert d["l2tp_ns"] == 0 and d["l2tp_nr"] == 0
    assert d["l2tp_assigned_tunnel"] == 0x1234 and d["l2tp_assigned_session"] is None
    assert d["l2tp_hidden"] is False


def test_all_message_type_names():
    names = {1: "SCCRQ", 2: "SCCRP", 3: "SCCCN", 4: "StopCCN", 6: "HELLO", 7: "OCRQ",
             8: "OCRP", 9: "OCCN", 10: "ICRQ", 11: "ICRP", 12: "ICCN", 14: "CDN", 15: "WEN",
             16: "SLI", 20: "ACK", 5: "unknown(5)", 300: "unknown(300)"}
    for n in names:
        d, err = udp_parse(ctrl_v2(7, 9, 3, 4, mtype(n)))
        assert err is None and d["l2tp_type"] == names[n], n
        assert d["l2tp_tunnel"] == 7 and d["l2tp_session"] == 9
        assert d["l2tp_ns"] == 3 and d["l2tp_nr"] == 4


def test_icrq_assigned_session():
    d, err = udp_parse(ctrl_v2(0x1234, 0, 2, 1, mtype(10) + avp(14, b"\x00\x2a") +
                               avp(15, b"\x00\x00\x00\x01")))
    assert err is None and d["l2tp_type"] == "ICRQ" and d["l2tp_assigned_session"] == 42


def test_zlb():
    d, err = udp_parse(ctrl_v2(0x1234, 0, 1, 2, b""))
    assert err is None and d["l2tp_type"] == "ZLB" and d["l2tp_control"] is True
    assert d["l2tp_nr"] == 2


def test_hidden_avp():
    hidden_tid = avp(9, b"\x12\x34\x56\x78\x9a\xbc", hidden=True)
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + avp(36, b"r" * 16) + hidden_tid))
    assert err is None and d["l2tp_hidden"] is True
    assert d["l2tp_type"] == "SCCRQ" and d["l2tp_assigned_tunnel"] is None
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, avp(0, b"\x00\x01", hidden=True)))
    assert err == "L2TP control message does not start with a Message Type AVP" or \
        err == "hidden L2TP Message Type AVP"


def test_vendor_avps_are_skipped():
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + avp(9, b"\x00\x05", vendor=9) +
                               avp(9, b"\x00\x06")))
    assert err is None and d["l2tp_assigned_tunnel"] == 6


def test_bad_avps():
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, avp(7, b"host") + mtype(1)))
    assert err == "L2TP control message does not start with a Message Type AVP"
    assert d["l2tp_type"] is None and d["l2tp_tunnel"] == 0
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, avp(0, b"\x00\x01\x00")))
    assert err == "bad L2TP Message Type AVP length 9"
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + avp(9, b"\x00\x01\x02")))
    assert err == "bad L2TP AVP 9 length 9"
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + struct.pack("!HHH", 0x8004, 0, 7)))
    assert err == "bad L2TP AVP length 4" and d["l2tp_type"] == "SCCRQ"
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + struct.pack("!HHH", 0x8040, 0, 7)))
    assert err == "bad L2TP AVP length 64"
    d, err = udp_parse(ctrl_v2(0, 0, 0, 0, mtype(1) + b"\x80\x08\x00"))
    assert err == "truncated L2TP AVP"


def test_control_needs_l_and_s():
    buf = struct.pack("!HHHHH", 0x8802, 1, 0, 0, 0) + mtype(1)  # T S, no L
    d, err = udp_parse(buf)
    assert err == "bad L2TP control header (L and S bits required)"
    assert d["l2tp_control"] is True and d["proto"] == "l2tp"


def test_length_field():
    buf = sccrq()
    d, err = udp_parse(buf + b"\x00" * 5)  # trailing bytes beyond Length are not AVPs
    assert err is None and d["l2tp_type"] == "SCCRQ"
    d, err = udp_parse(buf[:-1])
    assert err == "truncated L2TP message (%d of %d bytes)" % (len(buf) - 1, len(buf))


def test_every_truncation_is_an_error():
    buf = sccrq()
    for n in range(len(buf)):
        d, err = udp_parse(buf[:n])
        assert err is not None, n
        assert d["proto"] == "l2tp"


def test_partial_fragment():
    buf = sccrq()
    d, err = udp_parse(buf[:30], partial=True)
    assert err is None and d["l2tp_type"] == "SCCRQ"


def test_data_messages():
    d, err = udp_parse(struct.pack("!HHH", 0x0002, 0x1234, 0x0007) + b"\xff\x03\xc0\x21")
    assert err is None and d["l2tp_type"] == "data" and d["l2tp_control"] is False
    assert d["l2tp_tunnel"] == 0x1234 and d["l2tp_session"] == 7 and d["l2tp_ns"] is None
    # with L, S, O and P: length, Ns/Nr, offset size 2 + 2 pad bytes
    buf = struct.pack("!HHHHHHH", 0x4B02, 18, 5, 6, 10, 11, 2) + b"\x00\x00" + b"\xff\x03"
    d, err = udp_parse(buf)
    assert err is None and d["l2tp_tunnel"] == 5 and d["l2tp_session"] == 6
    assert d["l2tp_ns"] == 10 and d["l2tp_nr"] == 11
    buf = struct.pack("!HHHH", 0x0202, 5, 6, 40) + b"\x00" * 4  # offset past the end
    assert udp_parse(buf)[1] == "bad L2TP offset size"
    for n in range(6):
        assert udp_parse(struct.pack("!HHH", 0x0002, 1, 2)[:n])[1] is not None


def test_control_with_offset_bit_is_bad():
    buf = struct.pack("!HHHHHHH", 0xCA02, 14, 0, 0, 0, 0, 0)
    assert udp_parse(buf)[1] == "bad L2TP control header (O bit set)"


def test_unsupported_versions():
    d, err = udp_parse(struct.pack("!HH", 0xC801, 0) + b"\x00" * 8)
    assert err == "unsupported L2TP version 1" and d["proto"] == "l2tp"
    d, err = udp_parse(b"\xc8")
    assert err == "truncated L2TP header"


def test_v3_udp_control():
    avps = mtype(1) + avp(61, struct.pack("!I", 0xA1B2C3D4)) + avp(63, struct.pack("!I", 77))
    d, err = udp_parse(ctrl_v3(0, 0, 0, avps))
    assert err is None
    assert d["l2tp_version"] == 3 and d["l2tp_type"] == "SCCRQ" and d["l2tp_tunnel"] == 0
    assert d["l2tp_assigned_tunnel"] == 0xA1B2C3D4 and d["l2tp_assigned_session"] == 77
    assert d["l2tp_session"] is None
    d, err = udp_parse(ctrl_v3(0xA1B2C3D4, 1, 1, mtype(20)))
    assert err is None and d["l2tp_type"] == "ACK" and d["l2tp_tunnel"] == 0xA1B2C3D4
    d, err = udp_parse(ctrl_v3(0xA1B2C3D4, 1, 2, b""))
    assert err is None and d["l2tp_type"] == "ZLB"
    d, err = udp_parse(ctrl_v3(9, 1, 2, mtype(1) + avp(61, b"\x00\x01")))
    assert err == "bad L2TP AVP 61 length 8"


def test_v3_udp_data():
    d, err = udp_parse(struct.pack("!HHI", 0x0003, 0, 0x00C0FFEE) + b"payload")
    assert err is None and d["l2tp_type"] == "data" and d["l2tp_session"] == 0xC0FFEE
    assert d["l2tp_version"] == 3 and d["l2tp_tunnel"] is None
    assert udp_parse(struct.pack("!HH", 0x0003, 0))[1] == "truncated L2TPv3 data header"


def test_v3_over_ip():
    avps = mtype(10) + avp(63, struct.pack("!I", 0x01020304))
    d, err = ip_parse(b"\x00\x00\x00\x00" + ctrl_v3(0x55, 3, 4, avps))
    assert err is None
    assert d["l2tp_version"] == 3 and d["l2tp_control"] is True and d["l2tp_type"] == "ICRQ"
    assert d["l2tp_tunnel"] == 0x55 and d["l2tp_session"] == 0
    assert d["l2tp_ns"] == 3 and d["l2tp_assigned_session"] == 0x01020304
    d, err = ip_parse(struct.pack("!I", 0x01020304) + b"\x00" * 20)
    assert err is None and d["l2tp_type"] == "data" and d["l2tp_session"] == 0x01020304
    assert ip_parse(b"\x00\x00")[1] == "truncated L2TPv3 session ID"
    assert ip_parse(b"\x00" * 4 + struct.pack("!H", 0x4803))[1] == "L2TPv3 control message without T bit"
    assert ip_parse(b"\x00" * 4 + struct.pack("!H", 0xC802) + b"\x00" * 10)[1] == \
        "unsupported L2TP version 2"
    full = b"\x00\x00\x00\x00" + ctrl_v3(0x55, 3, 4, avps)
    for n in range(len(full)):
        assert ip_parse(full[:n])[1] is not None, n
