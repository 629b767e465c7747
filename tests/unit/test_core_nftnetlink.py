"""The xt NFQUEUE rule's netlink batch (pure; the lab tests install it in a kernel)."""
import struct

from nat import nftnetlink as X


def attrs(buf):
    """{type: payload} of a flat run of netlink attributes."""
    out, off = {}, 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        out[kind & ~X.NLA_F_NESTED] = buf[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def messages(batch):
    out, off = [], 0
    while off < len(batch):
        length, mtype, flags, seq = struct.unpack_from("=IHHI", batch, off)
        out.append((mtype, flags, seq, batch[off + 20:off + length]))  # after nlmsghdr + nfgenmsg
        off += length
    return out


def test_batch_is_begin_newrule_end():
    msgs = messages(X.queue_rule_batch("passthrough", "xt_queue", 7100, 2))
    assert [m[0] for m in msgs] == [X.NFNL_MSG_BATCH_BEGIN, (X.NFNL_SUBSYS_NFTABLES << 8) | X.NFT_MSG_NEWRULE,
                                    X.NFNL_MSG_BATCH_END]
    assert msgs[1][1] & X.NLM_F_APPEND and msgs[1][1] & X.NLM_F_ACK
    rule = attrs(msgs[1][3])
    assert rule[X.NFTA_RULE_TABLE] == b"passthrough\0" and rule[X.NFTA_RULE_CHAIN] == b"xt_queue\0"
    assert b"passthrough\0" in rule[X.NFTA_RULE_USERDATA]  # the comment nft lists
    elem = attrs(attrs(rule[X.NFTA_RULE_EXPRESSIONS])[X.NFTA_LIST_ELEM])
    assert elem[X.NFTA_EXPR_NAME] == b"target\0"
    target = attrs(elem[X.NFTA_EXPR_DATA])
    assert target[X.NFTA_TARGET_NAME] == b"NFQUEUE\0"
    assert struct.unpack("!I", target[X.NFTA_TARGET_REV]) == (3,)
    assert struct.unpack("=HHH", target[X.NFTA_TARGET_INFO][:6]) == (7100, 2, X.NFQ_FLAG_BYPASS)
    assert len(target[X.NFTA_TARGET_INFO]) == 8  # XT_ALIGN of the 6-byte struct
