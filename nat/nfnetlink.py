"""Netlink attributes as nfnetlink (linux/netlink.h, nfnetlink.h) frames them, shared by
nat/ctnetlink.py (conntrack) and nat/nftnetlink.py (nf_tables)."""
import struct

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000


def attr(kind, payload, nested=False):
    """One netlink attribute, padded to 4 bytes."""
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * ((-len(payload)) % 4)


def attr_list(buf, off, end):
    """(type, start, end) of each attribute in buf[off:end], in order (nested flag masked off);
    a list attribute (NFTA_LIST_ELEM ...) repeats its type."""
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, off)
        if alen < 4 or off + alen > end:
            return
        yield atype & 0x3FFF, off + 4, off + alen
        off += (alen + 3) & ~3


def attrs(buf, off, end):
    """{type: (start, end)} of the attributes in buf[off:end] (the last one of a type wins)."""
    return {t: (s, e) for t, s, e in attr_list(buf, off, end)}
