"""Netlink attributes as nfnetlink (linux/netlink.h, nfnetlink.h) frames them, and its dump
loop, shared by nat/ctnetlink.py (conntrack) and nat/nftnetlink.py (nf_tables)."""
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


def dump(sock, request, msg_type, parse, seq, bufsize=1 << 16):
    """Send request(seq) (a dump) on sock; collect parse(buf, start, end) (an iterable) of each
    message of msg_type, start after the netlink header. A dump the kernel marks interrupted
    (NLM_F_DUMP_INTR: the table changed between its parts) is sent again, twice at most, then
    returned as it is. Returns (items, errno of the kernel's error message or 0, last seq)."""
    for _ in range(3):
        seq = (seq + 1) & 0xFFFFFFFF
        sock.send(request(seq))
        out, intr, done = [], False, False
        while not done:
            data = sock.recv(bufsize)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype, mflags, mseq, _ = struct.unpack_from("=IHHII", data, off)
                if mseq == seq:
                    intr = intr or bool(mflags & NLM_F_DUMP_INTR)
                    if mtype == NLMSG_DONE:
                        done = True
                    elif mtype == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, off + 16)[0]
                        if err:
                            return out, err, seq
                        done = True
                    elif mtype == msg_type:
                        out.extend(parse(data, off + 16, min(off + mlen, len(data))))
                off += max(16, (mlen + 3) & ~3)
        if not intr:
            break
    return out, 0, seq
