"""One nf_tables rule the nft tool cannot write: the xt NFQUEUE target, for kernels without
nft_queue (CONFIG_NFT_QUEUE off, e.g. this project's CI machines).

iptables-nft queues on such kernels through nft_compat: an nf_tables rule whose expression is
the x_tables target NFQUEUE. The kernel accepts that expression in any table (NFQUEUE names no
table and no hook), so it can sit in passthrough's own chain: the packet is queued from
classify, the one prerouting hook passthrough has, and the daemon's NF_REPEAT verdict runs
classify again. (Before: classify set a mark, iptables' raw PREROUTING (-300) queued marked
packets, a third hook (-250) zoned them: two more hooks on every forwarded packet.)
The nft tool lists the rule as `xt target "NFQUEUE"`; libnftables has no syntax to add it, so
the message is built here (linux/netfilter/nf_tables.h, nfnetlink.h, xt_NFQUEUE.h).
"""
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE = 6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NFTNL_UDATA_RULE_COMMENT = 0
NFQ_FLAG_BYPASS, NFQ_FLAG_CPU_FANOUT = 0x01, 0x02
NFQUEUE_REV = 3  # struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }


class NetlinkError(OSError):
    pass


def _attr(kind, payload, nested=False):
    head = struct.pack("=HH", 4 + len(payload), kind | (NLA_F_NESTED if nested else 0))
    return head + payload + b"\0" * ((-len(payload)) % 4)


def _msg(mtype, flags, seq, attrs, family=socket.AF_INET, res_id=0):
    body = struct.pack("!BBH", family, 0, res_id) + attrs  # nfgenmsg
    return struct.pack("=IHHII", 16 + len(body), mtype, flags, seq, 0) + body


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
    attrs = (_attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
             + _attr(NFTA_RULE_EXPRESSIONS, expr, True) + _attr(NFTA_RULE_USERDATA, udata))
    sub = NFNL_SUBSYS_NFTABLES << 8
    return (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, b"", socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES)
            + _msg(sub | NFT_MSG_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, seq + 1, attrs)
            + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, b"", socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES))


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
