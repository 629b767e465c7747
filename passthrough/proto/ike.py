"""ISAKMP/IKEv1 (RFC 2408, RFC 2409) and IKEv2 (RFC 7296) message header and payload chain.

Only the cleartext is read: the header, and the generic payload headers up to the first
encrypted part (IKEv1 E flag, IKEv2 SK/SKF payload). From the payloads we keep what the
router needs: NAT-D hashes (RFC 3947 / RFC 7296 2.23) and vendor IDs.
"""
import struct

from passthrough.compat import hexstr

HEADER_LEN = 28

EXCHANGES_V1 = {
    0: "NONE",
    1: "Base",
    2: "Identity Protection (Main Mode)",
    3: "Authentication Only",
    4: "Aggressive",
    5: "Informational",
    6: "Transaction (Config Mode)",
    32: "Quick Mode",
    33: "New Group Mode",
}

EXCHANGES_V2 = {
    34: "IKE_SA_INIT",
    35: "IKE_AUTH",
    36: "CREATE_CHILD_SA",
    37: "INFORMATIONAL",
    38: "IKE_SESSION_RESUME",
    39: "GSA_AUTH",
    40: "GSA_REGISTRATION",
    41: "GSA_REKEY",
    43: "IKE_INTERMEDIATE",
    44: "IKE_FOLLOWUP_KE",
}

# RFC 2408 3.1 and later registrations (RFC 3947 NAT-D/NAT-OA; 130/131 are the pre-RFC drafts
# still sent by old peers; 132 is the de-facto IKEv1 fragmentation payload).
PAYLOADS_V1 = {
    1: "SA", 2: "P", 3: "T", 4: "KE", 5: "ID", 6: "CERT", 7: "CR", 8: "HASH", 9: "SIG",
    10: "NONCE", 11: "N", 12: "D", 13: "VID", 14: "ATTR", 15: "SAK", 16: "SAT", 17: "KD",
    18: "SEQ", 19: "POP", 20: "NAT-D", 21: "NAT-OA", 130: "NAT-D", 131: "NAT-OA", 132: "FRAG",
}

# RFC 7296 3.2 notation, plus G-IKEv2 (49-52), RFC 7383 SKF (53) and RFC 6467 PS (54).
PAYLOADS_V2 = {
    33: "SA", 34: "KE", 35: "IDi", 36: "IDr", 37: "CERT", 38: "CERTREQ", 39: "AUTH",
    40: "Nonce", 41: "N", 42: "D", 43: "V", 44: "TSi", 45: "TSr", 46: "SK", 47: "CP",
    48: "EAP", 49: "GSPM", 50: "IDg", 51: "GSA", 52: "KD", 53: "SKF", 54: "PS",
}

NOTIFY_V2 = {
    1: "UNSUPPORTED_CRITICAL_PAYLOAD", 4: "INVALID_IKE_SPI", 5: "INVALID_MAJOR_VERSION",
    7: "INVALID_SYNTAX", 9: "INVALID_MESSAGE_ID", 11: "INVALID_SPI",
    14: "NO_PROPOSAL_CHOSEN", 17: "INVALID_KE_PAYLOAD", 24: "AUTHENTICATION_FAILED",
    34: "SINGLE_PAIR_REQUIRED", 35: "NO_ADDITIONAL_SAS", 36: "INTERNAL_ADDRESS_FAILURE",
    37: "FAILED_CP_REQUIRED", 38: "TS_UNACCEPTABLE", 39: "INVALID_SELECTORS",
    43: "TEMPORARY_FAILURE", 44: "CHILD_SA_NOT_FOUND",
    16384: "INITIAL_CONTACT", 16385: "SET_WINDOW_SIZE", 16386: "ADDITIONAL_TS_POSSIBLE",
    16387: "IPCOMP_SUPPORTED", 16388: "NAT_DETECTION_SOURCE_IP",
    16389: "NAT_DETECTION_DESTINATION_IP", 16390: "COOKIE", 16391: "USE_TRANSPORT_MODE",
    16392: "HTTP_CERT_LOOKUP_SUPPORTED", 16393: "REKEY_SA", 16394: "ESP_TFC_PADDING_NOT_SUPPORTED",
    16395: "NON_FIRST_FRAGMENTS_ALSO", 16396: "MOBIKE_SUPPORTED", 16397: "ADDITIONAL_IP4_ADDRESS",
    16398: "ADDITIONAL_IP6_ADDRESS", 16399: "NO_ADDITIONAL_ADDRESSES", 16400: "UPDATE_SA_ADDRESSES",
    16401: "COOKIE2", 16402: "NO_NATS_ALLOWED", 16403: "AUTH_LIFETIME",
    16404: "MULTIPLE_AUTH_SUPPORTED", 16405: "ANOTHER_AUTH_FOLLOWS", 16406: "REDIRECT_SUPPORTED",
    16407: "REDIRECT", 16408: "REDIRECTED_FROM", 16417: "EAP_ONLY_AUTHENTICATION",
    16418: "CHILDLESS_IKEV2_SUPPORTED", 16419: "QUICK_CRASH_DETECTION",
    16420: "IKEV2_MESSAGE_ID_SYNC_SUPPORTED", 16424: "SECURE_PASSWORD_METHODS",
    16430: "IKEV2_FRAGMENTATION_SUPPORTED", 16431: "SIGNATURE_HASH_ALGORITHMS",
    16432: "CLONE_IKE_SA_SUPPORTED", 16433: "CLONE_IKE_SA", 16434: "PUZZLE", 16435: "USE_PPK",
    16438: "INTERMEDIATE_EXCHANGE_SUPPORTED", 16441: "ADDITIONAL_KEY_EXCHANGE", 16442: "USE_AGGFRAG",
}

NOTIFY_V1 = {
    1: "INVALID-PAYLOAD-TYPE", 14: "NO-PROPOSAL-CHOSEN", 16: "PAYLOAD-MALFORMED",
    18: "INVALID-ID-INFORMATION", 24: "AUTHENTICATION-FAILED",
    24576: "RESPONDER-LIFETIME", 24577: "REPLAY-STATUS", 24578: "INITIAL-CONTACT",
    36136: "R-U-THERE", 36137: "R-U-THERE-ACK",
}

NOTIFY_NATD_SRC = 16388
NOTIFY_NATD_DST = 16389
_V1_NATD = (20, 130)
_V1_VID = 13
_V2_VID = 43
_V2_NOTIFY = 41
_V1_NOTIFY = 11
_V2_ENCRYPTED = (46, 53)  # SK, SKF: everything after them is ciphertext

# IKEv2 header flags (RFC 7296 3.1); IKEv1 flags (RFC 2408 3.1)
FLAG_V2_INITIATOR = 0x08
FLAG_V2_VERSION = 0x10
FLAG_V2_RESPONSE = 0x20
FLAG_V1_ENCRYPTION = 0x01


def exchange_name(version, xtype):
    table = EXCHANGES_V2 if version == 2 else EXCHANGES_V1
    name = table.get(xtype)
    return name if name is not None else "unknown(%d)" % xtype


def payload_name(version, ptype):
    table = PAYLOADS_V2 if version == 2 else PAYLOADS_V1
    name = table.get(ptype)
    return name if name is not None else "unknown(%d)" % ptype


def notify_name(version, ntype):
    table = NOTIFY_V2 if version == 2 else NOTIFY_V1
    name = table.get(ntype)
    return name if name is not None else "unknown(%d)" % ntype


def parse_ike(buf, off, end, d, partial):
    """Decode one IKE message at buf[off:end]; return None or an error string.

    partial: the message may be cut short by IP fragmentation; stop quietly at `end`.
    """
    if off + HEADER_LEN > end:
        return "truncated IKE header"
    next_pl, ver, xtype, flags, msgid, mlen = struct.unpack_from("!BBBBII", buf, off + 16)
    major = ver >> 4
    if major != 1 and major != 2:
        return "unknown IKE version %d.%d" % (major, ver & 0x0F)
    d["ike_version"] = major
    d["ike_spi_i"] = hexstr(buf[off:off + 8])
    d["ike_spi_r"] = hexstr(buf[off + 8:off + 16])
    d["ike_exchange_type"] = xtype
    d["ike_exchange"] = exchange_name(major, xtype)
    d["ike_flags"] = flags
    d["ike_msgid"] = msgid
    d["ike_length"] = mlen
    if major == 2:
        d["ike_initiator"] = bool(flags & FLAG_V2_INITIATOR)
        d["ike_response"] = bool(flags & FLAG_V2_RESPONSE)
    payloads = []
    natd = []
    vids = []
    notifies = []
    d["ike_payloads"] = payloads
    d["ike_nat_d"] = natd
    d["ike_vendor_ids"] = vids
    d["ike_notify"] = notifies
    if mlen < HEADER_LEN:
        return "bad IKE length %d" % mlen
    if off + mlen > end:
        if not partial:
            return "truncated IKE message (%d of %d bytes)" % (end - off, mlen)
    else:
        end = off + mlen
    if major == 1 and flags & FLAG_V1_ENCRYPTION:
        if next_pl:
            payloads.append("encrypted")
        return None
    return _walk_payloads(buf, off + HEADER_LEN, end, next_pl, major, d, partial)


def _walk_payloads(buf, off, end, ptype, major, d, partial):
    """Follow the generic payload header chain (next payload, critical, length)."""
    payloads = d["ike_payloads"]
    while ptype != 0:
        if off + 4 > end:
            if partial:
                return None
            return "truncated IKE payload header"
        nxt = buf[off]
        plen = (buf[off + 2] << 8) | buf[off + 3]
        payloads.append(payload_name(major, ptype))
        if plen < 4:
            return "bad IKE payload length %d" % plen
        pend = off + plen
        if pend > end:
            if partial:
                return None
            return "bad IKE payload length %d" % plen
        if major == 2:
            if ptype in _V2_ENCRYPTED:
                return None
            if ptype == _V2_NOTIFY:
                err = _notify_v2(buf, off + 4, pend, d)
                if err:
                    return err
            elif ptype == _V2_VID:
                d["ike_vendor_ids"].append(hexstr(buf[off + 4:pend]))
        else:
            if ptype in _V1_NATD:
                d["ike_nat_d"].append(hexstr(buf[off + 4:pend]))
            elif ptype == _V1_VID:
                d["ike_vendor_ids"].append(hexstr(buf[off + 4:pend]))
            elif ptype == _V1_NOTIFY:
                err = _notify_v1(buf, off + 4, pend, d)
                if err:
                    return err
        ptype = nxt
        off = pend
    return None


def _notify_v2(buf, off, end, d):
    # Protocol ID (1), SPI Size (1), Notify Message Type (2), SPI, Notification Data
    if off + 4 > end:
        return "truncated IKE notify payload"
    spi_size = buf[off + 1]
    ntype = (buf[off + 2] << 8) | buf[off + 3]
    data = off + 4 + spi_size
    if data > end:
        return "bad IKE notify SPI size %d" % spi_size
    d["ike_notify"].append(notify_name(2, ntype))
    if ntype == NOTIFY_NATD_SRC or ntype == NOTIFY_NATD_DST:
        d["ike_nat_d"].append(hexstr(buf[data:end]))
    return None


def _notify_v1(buf, off, end, d):
    # DOI (4), Protocol ID (1), SPI Size (1), Notify Message Type (2), SPI, Notification Data
    if off + 8 > end:
        return "truncated IKE notify payload"
    spi_size = buf[off + 5]
    if off + 8 + spi_size > end:
        return "bad IKE notify SPI size %d" % spi_size
    d["ike_notify"].append(notify_name(1, (buf[off + 6] << 8) | buf[off + 7]))
    return None
