"""nf_tables over netlink where libnftables does not serve: one rule the nft tool cannot write,
and the dump of a map's elements with their counters.

The rule: the xt NFQUEUE target, for kernels without nft_queue (CONFIG_NFT_QUEUE off, e.g. this
project's CI machines).

iptables-nft queues on such kernels through nft_compat: an nf_tables rule whose expression is
the x_tables target NFQUEUE. The kernel accepts that expression in any table (NFQUEUE names no
table and no hook), so it can sit in passthrough's own chain: the packet is queued from
classify, the one prerouting hook passthrough has, and the daemon's NF_REPEAT verdict runs
classify again. (Before: classify set a mark, iptables' raw PREROUTING (-300) queued marked
packets, a third hook (-250) zoned them: two more hooks on every forwarded packet.)
The nft tool lists the rule as `xt target "NFQUEUE"`; libnftables has no syntax to add it, so
the message is built here (linux/netfilter/nf_tables.h, nfnetlink.h, xt_NFQUEUE.h).

The element writes: the daemon's element ops (a flow learned, gone, a zone moved) and its
heartbeat. Through libnftables each command parsed its text and built the table's cache (a
128 KB hash table per table of the ruleset, freed and allocated again on every command: 3 to
19 such blocks per element added, measured with strace); here they are NEWSETELEM /
DELSETELEM messages in one batch, each element as ELEMENT_LAYOUT encodes it. Sets declared
with `counter` give an element added without expressions a counter of its own (the kernel
clones the set's expressions, 5.11+; tests/lab/test_map_read.py checks it).

The dump: the daemon reads the per-element packet counters of its demux maps every few seconds.
`nft -j list map` through libnftables builds its whole cache of the map, the JSON text and its
parse: with 4k elements glibc's heap grew by ~17 MB that it kept (measured in a namespace of
our own; bench/memory.py). NFT_MSG_GETSETELEM is read here one netlink buffer at a time,
elements decoded as the map's layout (nat/nftables.ELEMENT_LAYOUT) says.
"""
import errno
import os
import select
import socket
import struct

from nat import nfnetlink
from nat.nfnetlink import (NETLINK_NETFILTER, NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLMSG_ERROR,
                           attr as _attr, attr_list, attrs)

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 6, 12, 13, 14
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFTNL_UDATA_RULE_COMMENT = 0
NFQ_FLAG_BYPASS, NFQ_FLAG_CPU_FANOUT = 0x01, 0x02
NFQUEUE_REV = 3  # struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_USERDATA = 1, 2, 4, 6
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 10  # one expression / several (kernel 5.11+)
NFTA_DATA_VALUE = 1
NFTA_COUNTER_PACKETS = 2
NFTNL_UDATA_SET_ELEM_COMMENT = 0


class NetlinkError(OSError):
    pass


def _msg(mtype, flags, seq, payload, family=socket.AF_INET, res_id=0):
    body = struct.pack("!BBH", family, 0, res_id) + payload  # nfgenmsg
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


def _batch_mark(mtype, seq):
    """NFNL_MSG_BATCH_BEGIN / _END of an nf_tables batch."""
    return _msg(mtype, NLM_F_REQUEST, seq, b"", socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES)


def _set_of(table, name):
    """The table and set (or map) attributes that name where elements are."""
    return _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0") + _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")


def nfqueue_info(queue_num, queue_count=1, bypass=True):
    """xt_NFQ_info_v3 in host order, padded to XT_ALIGN (8)."""
    flags = NFQ_FLAG_BYPASS if bypass else 0
    return struct.pack("=HHH", queue_num, max(1, queue_count), flags) + b"\0\0"


def queue_rule_batch(table, chain, queue_num, queue_count=1, comment="passthrough", seq=1):
    """A batch appending `xt target NFQUEUE` to `chain` of `table` (family ip)."""
    target = (_attr(NFTA_TARGET_NAME, b"NFQUEUE\0") + _attr(NFTA_TARGET_REV, struct.pack("!I", NFQUEUE_REV))
              + _attr(NFTA_TARGET_INFO, nfqueue_info(queue_num, queue_count)))
    expr = _attr(NFTA_LIST_ELEM, _attr(NFTA_EXPR_NAME, b"target\0") + _attr(NFTA_EXPR_DATA, target, True), True)
    text = comment.encode() + b"\0"
    udata = struct.pack("BB", NFTNL_UDATA_RULE_COMMENT, len(text)) + text
    rule = (_attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
            + _attr(NFTA_RULE_EXPRESSIONS, expr, True) + _attr(NFTA_RULE_USERDATA, udata))
    sub = NFNL_SUBSYS_NFTABLES << 8
    return (_batch_mark(NFNL_MSG_BATCH_BEGIN, seq)
            + _msg(sub | NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, seq + 1, rule)
            + _batch_mark(NFNL_MSG_BATCH_END, seq + 2))


def add_queue_rule(table, chain, queue_num, queue_count=1):
    """Send the batch; raise NetlinkError with the kernel's errno if it refuses the rule."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.settimeout(2.0)
        s.bind((0, 0))
        s.send(queue_rule_batch(table, chain, queue_num, queue_count))
        data = s.recv(65536)
    finally:
        s.close()
    off = 0
    while off + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, off)
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, off + 16)[0]
            if err:
                raise NetlinkError(err, "nf_tables refused the xt NFQUEUE rule in %s %s: %s"
                                   % (table, chain, os.strerror(err)))
            return
        off += max(16, (length + 3) & ~3)
    raise NetlinkError(0, "no answer from nf_tables")


# --- map elements ----------------------------------------------------------------------------------
# A concatenated key's parts each take whole 32-bit registers (a 16-bit part is padded to 4
# bytes, a 64-bit one takes 8); a lone part is its own length. Payload and addresses are in
# network order, ct zone is a host-order u16. field: (size, decode).
_FIELD = {"ip": (4, socket.inet_ntoa),
          "be16": (2, lambda b: int.from_bytes(b, "big")),
          "be32": (4, lambda b: int.from_bytes(b, "big")),
          "be64": (8, lambda b: int.from_bytes(b, "big")),
          "zone": (2, lambda b: struct.unpack("=H", b)[0])}


def _value(buf, span, fields):
    """The NFTA_DATA_VALUE inside a key / data attribute, decoded as fields (a tuple)."""
    inner = attrs(buf, span[0], span[1]).get(NFTA_DATA_VALUE)
    if inner is None:
        return None
    raw, out = bytes(buf[inner[0]:inner[1]]), []
    for f in fields:
        size, decode = _FIELD[f]
        if len(raw) < size:
            return None
        out.append(decode(raw[:size]))
        raw = raw[(size + 3) & ~3:]
    return tuple(out)


def _counter_packets(buf, start, end):
    """Packets of one expression's attributes buf[start:end] if it is a counter, else None."""
    a = attrs(buf, start, end)
    name, data = a.get(NFTA_EXPR_NAME), a.get(NFTA_EXPR_DATA)
    if name is None or data is None or bytes(buf[name[0]:name[1]]).rstrip(b"\0") != b"counter":
        return None
    pk = attrs(buf, data[0], data[1]).get(NFTA_COUNTER_PACKETS)
    return struct.unpack_from("!Q", buf, pk[0])[0] if pk and pk[1] - pk[0] >= 8 else 0


def _comment(buf, start, end):
    """The comment among the (type, length, bytes) records of an element's userdata (libnftnl's udata)."""
    off = start
    while off + 2 <= end:
        t, n = buf[off], buf[off + 1]
        if t == NFTNL_UDATA_SET_ELEM_COMMENT:
            return bytes(buf[off + 2:off + 2 + n]).rstrip(b"\0").decode(errors="replace")
        off += 2 + n
    return None


def parse_elements(buf, off, end, layout):
    """(key tuple, value, packets, comment) of each element in one NFT_MSG_NEWSETELEM body
    buf[off:end] (after nfgenmsg), in nft's JSON terms: addresses as text, the rest as numbers,
    value None in a set, packets 0 without a counter, comment None without one."""
    key_fields, value_field = layout
    lst = attrs(buf, off, end).get(NFTA_SET_ELEM_LIST_ELEMENTS)
    if lst is None:
        return
    for t, s, e in attr_list(buf, lst[0], lst[1]):
        if t != NFTA_LIST_ELEM:
            continue
        a = attrs(buf, s, e)
        if NFTA_SET_ELEM_KEY not in a:
            continue
        key = _value(buf, a[NFTA_SET_ELEM_KEY], key_fields)
        if key is None:
            continue
        value = None
        if value_field and NFTA_SET_ELEM_DATA in a:
            v = _value(buf, a[NFTA_SET_ELEM_DATA], (value_field,))
            value = v[0] if v else None
        packets = None
        if NFTA_SET_ELEM_EXPR in a:
            packets = _counter_packets(buf, *a[NFTA_SET_ELEM_EXPR])
        elif NFTA_SET_ELEM_EXPRESSIONS in a:
            counts = [_counter_packets(buf, es, ee) for et, es, ee in attr_list(buf, *a[NFTA_SET_ELEM_EXPRESSIONS])
                      if et == NFTA_LIST_ELEM]
            packets = next((c for c in counts if c is not None), None)
        comment = _comment(buf, *a[NFTA_SET_ELEM_USERDATA]) if NFTA_SET_ELEM_USERDATA in a else None
        yield key, value, packets or 0, comment


def getsetelem_msg(table, name, seq, family=socket.AF_INET):
    return _msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, seq, _set_of(table, name),
                family)


def map_elements(table, name, layout, family=socket.AF_INET, bufsize=1 << 16):
    """[(key tuple, value, packets, comment)] of map `name` of `table`; [] when the map (or
    table) does not exist. A dump the kernel marks interrupted (the ruleset changed between its
    parts) is retried twice, then returned as it is. Raises NetlinkError on other errors."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        s.settimeout(2.0)
        s.bind((0, 0))
        out, err, _ = nfnetlink.dump(s, lambda seq: getsetelem_msg(table, name, seq, family),
                                     (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
                                     lambda data, start, end: parse_elements(data, start + 4, end, layout), 0, bufsize)
    finally:
        s.close()
    if err == errno.ENOENT:
        return []
    if err:
        raise NetlinkError(err, "listing %s %s: %s" % (table, name, os.strerror(err)))
    return out


# --- element writes --------------------------------------------------------------------------------
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10  # errors without a copy of the refused message
BATCH_BYTES = 64 << 10  # one sendmsg stays well under the socket's default send buffer (208 KB)

def _ip(text):
    try:
        return socket.inet_aton(text)
    except (OSError, TypeError):
        raise ValueError("not an IPv4 address: %r" % (text,))


_PACK = {"ip": _ip,
         "be16": lambda v: int(v).to_bytes(2, "big"),
         "be32": lambda v: int(v).to_bytes(4, "big"),
         "be64": lambda v: int(v).to_bytes(8, "big"),
         "zone": lambda v: struct.pack("=H", int(v)),
         "u8": lambda v: struct.pack("B", int(v))}


def encode(fields, values):
    """Register bytes of a key or value (_FIELD's reverse): parts of a concatenation each padded
    to 32 bits, a lone part its own length."""
    if len(fields) == 1:
        return _PACK[fields[0]](values[0])
    out = b""
    for f, v in zip(fields, values):
        raw = _PACK[f](v)
        out += raw + b"\0" * ((-len(raw)) % 4)
    return out


def element_msg(delete, table, name, key, seq, data=None, comment=None, timeout_ms=None, ack=False,
                family=socket.AF_INET):
    """One NEWSETELEM (add: an element that exists with the same value is no error, another
    value is EBUSY/EEXIST) or DELSETELEM message with one element of key bytes."""
    elem = _attr(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, key), True)
    if data is not None:
        elem += _attr(NFTA_SET_ELEM_DATA, _attr(NFTA_DATA_VALUE, data), True)
    if timeout_ms is not None:
        elem += _attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", timeout_ms))
    if comment:
        text = comment.encode()[:254] + b"\0"
        elem += _attr(NFTA_SET_ELEM_USERDATA, struct.pack("BB", NFTNL_UDATA_SET_ELEM_COMMENT, len(text)) + text)
    body = _set_of(table, name) + _attr(NFTA_SET_ELEM_LIST_ELEMENTS, _attr(NFTA_LIST_ELEM, elem, True), True)
    mtype = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_DELSETELEM if delete else NFT_MSG_NEWSETELEM)
    return _msg(mtype, NLM_F_REQUEST | (NLM_F_ACK if ack else 0) | (0 if delete else NLM_F_CREATE), seq, body, family)


class ElementWriter:
    """A netlink socket for batches of element messages. send(groups): groups is a list of
    lists of element_msg arguments (dicts without seq), one group per op, applied all or
    nothing. Returns {group index: errno} of the groups the kernel refused; all the others are
    applied (the kernel undoes a batch with a refusal whole: its other groups are sent again)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self):
        self.sock.close()

    def send(self, groups):
        failed, batch, size = {}, [], 0
        for i, group in enumerate(groups):
            if batch and size >= BATCH_BYTES:
                failed.update(self._commit(batch))
                batch, size = [], 0
            for args in group:
                batch.append((i, args))
                size += 64 + len(args.get("comment") or "")
        if batch:
            failed.update(self._commit(batch))
        return failed

    def _commit(self, batch):
        refused = {}
        while batch:  # each round drops at least one group
            now = self._batch(batch)
            if not now:
                break
            refused.update(now)
            batch = [(i, args) for i, args in batch if i not in now]
        return refused

    def _next(self):
        self.seq = self.seq % 0x7FFFFFF0 + 1
        return self.seq

    def _batch(self, batch):
        """One batch: BEGIN, the messages (only the last asks for an ack: the kernel answers
        every refused message anyway, in order, before it), END. {group: errno} of the refused."""
        owner, msgs = {}, []
        begin = self._next()
        for n, (i, args) in enumerate(batch):
            last = self._next()
            owner[last] = i
            msgs.append(element_msg(seq=last, ack=n == len(batch) - 1, **args))
        end = self._next()
        self.sock.sendall(_batch_mark(NFNL_MSG_BATCH_BEGIN, begin) + b"".join(msgs) + _batch_mark(NFNL_MSG_BATCH_END, end))
        failed = {}
        while True:
            if not select.select([self.sock], [], [], 2.0)[0]:
                raise NetlinkError(errno.ETIMEDOUT, "no answer from nf_tables to an element batch")
            data = self.sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                mlen, mtype, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
                if mtype == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if mseq in (begin, end) and err:  # BEGIN or END refused: nothing was applied
                        raise NetlinkError(err, "nf_tables refused an element batch: %s" % os.strerror(err))
                    if mseq in owner:  # (an answer to an older batch that timed out is not)
                        if err:
                            failed.setdefault(owner[mseq], err)
                        if mseq == last:
                            return failed
                off += max(16, (mlen + 3) & ~3)
