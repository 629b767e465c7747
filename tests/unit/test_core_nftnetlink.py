"""The xt NFQUEUE rule's netlink batch (pure; the lab tests install it in a kernel)."""
import struct

import pytest

from nat import nftnetlink as X
from nat.nfnetlink import NLA_F_NESTED


def attrs(buf):
    """{type: payload} of a flat run of netlink attributes."""
    out, off = {}, 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        out[kind & ~NLA_F_NESTED] = buf[off + 4:off + length]
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


# --- map elements (NFT_MSG_GETSETELEM dump) ---------------------------------------------------
# One NFT_MSG_NEWSETELEM message of a 6.18 kernel (x86-64) dumping
#   map ike_zone { typeof ip saddr . @th,64,64 : ct zone; counter; }
# with 10.0.0.3 . 0x8000000000000001 counter packets 7 comment "ike 192.168.1.10 500 500 x" : 4099,
# 10.0.0.2 . 0xffffffffffffffff : 65535 and 10.0.0.1 . 0x1122334455667788 comment "ike x" : 4097.
IKE_DUMP = bytes.fromhex(
    "580100000c0a020001000000041300000200000310000100706173737468726f756768000d000200696b655f7a6f"
    "6e6500000000240103007400010014000100100001000a00000380000000000000010c00020006000100031000002c"
    "0007000c000100636f756e746572001c0002000c00010000000000000002bc0c000200000000000000000721000600"
    "001b696b65203139322e3136382e312e313020353030203530302078000000005000010014000100100001000a0000"
    "02ffffffffffffffff0c00020006000100ffff00002c0007000c000100636f756e746572001c0002000c0001000000"
    "0000000000000c00020000000000000000005c00010014000100100001000a00000111223344556677880c00020006"
    "000100011000002c0007000c000100636f756e746572001c0002000c00010000000000000000000c00020000000000"
    "000000000c0006000006696b65207800")


def test_dump_of_a_real_kernel_parses_as_nft_lists_it():
    import sys
    if sys.byteorder != "little":
        pytest.skip("the captured dump holds host-order ct zones of a little-endian machine")
    got = list(X.parse_elements(IKE_DUMP, 20, len(IKE_DUMP), (("ip", "be64"), "zone")))
    assert got == [(("10.0.0.3", 0x8000000000000001), 4099, 7, "ike 192.168.1.10 500 500 x"),
                   (("10.0.0.2", 0xFFFFFFFFFFFFFFFF), 65535, 0, None),  # unsigned, not nft JSON's -1
                   (("10.0.0.1", 0x1122334455667788), 4097, 0, "ike x")]


def element(key, data=None, exprs=None, comment=None, many=False):
    a = X._attr(X.NFTA_SET_ELEM_KEY, X._attr(X.NFTA_DATA_VALUE, key), True)
    if data is not None:
        a += X._attr(X.NFTA_SET_ELEM_DATA, X._attr(X.NFTA_DATA_VALUE, data), True)
    if exprs:
        one = [X._attr(X.NFTA_EXPR_NAME, name + b"\0") + X._attr(X.NFTA_EXPR_DATA, body, True) for name, body in exprs]
        if many:
            a += X._attr(X.NFTA_SET_ELEM_EXPRESSIONS, b"".join(X._attr(X.NFTA_LIST_ELEM, e, True) for e in one), True)
        else:
            a += X._attr(X.NFTA_SET_ELEM_EXPR, one[0], True)
    if comment is not None:
        text = comment.encode() + b"\0"
        a += X._attr(X.NFTA_SET_ELEM_USERDATA, struct.pack("BB", X.NFTNL_UDATA_SET_ELEM_COMMENT, len(text)) + text)
    return X._attr(X.NFTA_LIST_ELEM, a, True)


def body(*elements):
    return (struct.pack("!BBH", 2, 0, 0) + X._attr(X.NFTA_SET_ELEM_LIST_TABLE, b"passthrough\0")
            + X._attr(X.NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(elements), True))


def counter(packets):
    return (b"counter", X._attr(1, struct.pack("!Q", packets * 100)) + X._attr(X.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)))


def test_layouts_pad_parts_to_registers_and_read_counters_in_either_form():
    zone, remote = struct.pack("=H", 4100), bytes([203, 0, 113, 2])
    cases = [((("ip", "be16"), "zone"), element(remote + b"\x11\x22\0\0", zone, [counter(5)], "l2tp"),
              (("203.0.113.2", 0x1122), 4100, 5, "l2tp")),                       # a 16-bit part padded
             ((("zone",), "ip"), element(zone, bytes([192, 168, 1, 10])),
              ((4100,), "192.168.1.10", 0, None)),                               # a lone 16-bit key
             ((("ip", "be32"), "zone"), element(remote + struct.pack("!I", 0xC0FFEE), zone,
                                                [(b"limit", b""), counter(9)], many=True),
              (("203.0.113.2", 0xC0FFEE), 4100, 9, None))]                      # several expressions
    for layout, elem, want in cases:
        b = body(elem)
        assert list(X.parse_elements(b, 4, len(b), layout)) == [want], layout


def test_cut_or_garbled_dumps_give_fewer_elements_never_an_error():
    import random
    rnd = random.Random(7)
    layout = (("ip", "be64"), "zone")
    full = len(list(X.parse_elements(IKE_DUMP, 20, len(IKE_DUMP), layout)))
    for cut in range(20, len(IKE_DUMP)):
        assert len(list(X.parse_elements(IKE_DUMP[:cut], 20, cut, layout))) <= full
    for _ in range(300):
        b = bytearray(IKE_DUMP)
        for _ in range(4):
            b[rnd.randrange(20, len(b))] = rnd.randrange(256)
        list(X.parse_elements(bytes(b), 20, len(b), layout))  # must not raise
    short = body(element(b"\x0a\0\0"))  # a key shorter than its layout: skipped
    assert list(X.parse_elements(short, 4, len(short), (("ip",), None))) == []


def test_every_map_has_a_layout_matching_its_type():
    from nat import nftables as N
    assert set(N.ELEMENT_LAYOUT) == set(N.KEY_TYPES)
    words = {"ip saddr": "ip", "ip daddr": "ip", "udp sport": "be16", "udp dport": "be16", "ct zone": "zone",
             "@th,0,32": "be32", "@th,64,64": "be64", "@th,96,16": "be16"}
    for name, text in N.KEY_TYPES.items():
        key, value = text[len("typeof "):].split(" : ")
        assert N.ELEMENT_LAYOUT[name] == (tuple(words[p] for p in key.split(" . ")), words[value]), name


def test_map_read_falls_back_to_the_json_listing_and_warns_once(monkeypatch, caplog):
    from nat import kernel as K
    from passthrough.config import Config

    class FakeNft:
        def list_json(self, what):
            return [{"map": {"elem": [[{"concat": ["203.0.113.2", -1]}, 4097]]}}]

    def refuse(*args, **kw):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(K.nftnetlink, "map_elements", refuse)
    k = K.Kernel(Config({}), nft=FakeNft())
    with caplog.at_level("WARNING", logger="passthrough.kernel"):
        for _ in range(3):
            assert k.map_elements("ike_zone") == [(("203.0.113.2", 0xFFFFFFFFFFFFFFFF), 4097, 0, None)]
    assert len([r for r in caplog.records if "over netlink" in r.getMessage()]) == 1


# --- element writes ------------------------------------------------------------------------------
OPS = [("add", "lan_zone", ("192.168.1.10",), 4097), ("add", "zone_lan", (4097,), "192.168.1.10"),
       ("add", "esp_out", ("192.168.1.10", 0xC0FFEE01), 4097),
       ("add", "ike_zone", ("203.0.113.2", 0x8000000000000001), 4097, 'ike "x" 192.168.1.10'),
       ("add", "esp_zone", ("203.0.113.2", 0xFFFFFFFF), 4097), ("add", "l2tp_zone", ("203.0.113.2", 0xBEEF), 4097),
       ("add", "natt_out", ("192.168.1.10", "203.0.113.2"), 40001), ("add", "natt_in", ("203.0.113.2", 40001), 4097)]


def test_element_messages_read_back_as_the_dump_reads_them():
    """Each map's add, built as the kernel gets it, parsed by the dump's own parser (a dump
    answers with NEWSETELEM bodies of the same layout): the op's key, value and comment."""
    from nat import kernel as K, nftables as N
    for op in OPS:
        msgs = K.op_messages(op)
        assert msgs[0]["name"] == op[1]
        assert [m["name"] for m in msgs[1:]] == ([N.KEYSET[op[1]]] if op[1] in N.KEYSET else [])
        raw = X.element_msg(seq=5, **msgs[0])
        mtype, flags, seq = struct.unpack_from("=HHI", raw, 4)
        assert mtype == (X.NFNL_SUBSYS_NFTABLES << 8) | X.NFT_MSG_NEWSETELEM and flags & X.NLM_F_CREATE and seq == 5
        assert not flags & X.NLM_F_ACK
        got = list(X.parse_elements(raw, 20, len(raw), N.ELEMENT_LAYOUT[op[1]]))
        comment = op[4].replace('"', "") if len(op) > 4 else None
        assert got == [(op[2], op[3], 0, comment)], op
        gone = K.op_messages(("del",) + op[1:3])
        assert all(m["delete"] and "data" not in m and "comment" not in m for m in gone)
        assert [m["key"] for m in gone] == [m["key"] for m in msgs]


def test_keys_pad_concatenations_only_and_refuse_what_is_no_address():
    assert X.encode(("zone",), (4097,)) == struct.pack("=H", 4097)  # a lone part: its own length
    assert X.encode(("ip", "be16"), ("203.0.113.2", 0xBEEF)) == bytes([203, 0, 113, 2, 0xBE, 0xEF, 0, 0])
    assert len(X.encode(("ip", "be64"), ("203.0.113.2", 1))) == 12
    with pytest.raises(ValueError):
        X.encode(("ip",), ("203.0.113.300",))


class ScriptedWriter(X.ElementWriter):
    """_batch answers from a script: the refusals of each batch in turn."""

    def __init__(self, script):
        self.seq, self.script, self.sent = 0, list(script), []

    def _batch(self, batch):
        self.sent.append([i for i, _ in batch])
        refused = self.script.pop(0) if self.script else {}
        return {i: e for i, e in refused.items() if i in {j for j, _ in batch}}


def test_a_refused_group_does_not_take_the_others_with_it():
    w = ScriptedWriter([{1: 17}])
    groups = [[{"n": 0}], [{"n": 1}, {"n": 1}], [{"n": 2}]]
    assert w.send(groups) == {1: 17}
    assert w.sent == [[0, 1, 1, 2], [0, 2]]  # the kernel undid the batch: the others again, without 1


def test_batches_are_split_between_groups(monkeypatch):
    monkeypatch.setattr(X, "BATCH_BYTES", 200)
    w = ScriptedWriter([])
    assert w.send([[{"n": i}, {"n": i}] for i in range(4)]) == {}
    assert w.sent == [[0, 0, 1, 1], [2, 2, 3, 3]]  # 64 bytes a message: a group never split


def test_refused_adds_are_replaced_and_deletes_of_what_is_gone_are_no_failure(monkeypatch):
    from nat import kernel as K
    from passthrough.config import Config
    import errno

    class Writer:
        def __init__(self):
            self.calls = []

        def send(self, groups):
            self.calls.append(groups)
            if len(self.calls) == 1:
                return {0: errno.EEXIST, 1: errno.ENOENT}
            return {}

    k = K.Kernel(Config({}), nft=object())
    w = k._writer = Writer()
    ops = [("add", "lan_zone", ("192.168.1.10",), 4098), ("del", "esp_zone", ("203.0.113.2", 1))]
    assert k.apply(ops) == 0
    assert len(w.calls) == 2  # the add again as delete + add; the delete not again
    replace = w.calls[1][0]
    assert [(m["name"], m["delete"]) for m in replace] == [("lan_zone", True), ("lan_zone_k", True),
                                                           ("lan_zone", False), ("lan_zone_k", False)]


def test_element_writes_fall_back_to_libnftables_and_say_so_once(monkeypatch, caplog):
    from nat import kernel as K
    from passthrough.config import Config

    class FakeNft:
        def __init__(self):
            self.text = []

        def run(self, text, json_out=False):
            self.text.append(text)
            return True, "", ""

    def refuse():
        raise OSError(93, "Protocol not supported")

    monkeypatch.setattr(K.nftnetlink, "ElementWriter", refuse)
    nft = FakeNft()
    k = K.Kernel(Config({}), nft=nft)
    with caplog.at_level("WARNING", logger="passthrough.kernel"):
        assert k.apply(OPS[:1]) == 0
        assert k.apply(OPS[1:2]) == 0
        k.alive()
    assert nft.text[0].startswith("add element ip passthrough lan_zone { 192.168.1.10 : 4097 }")
    assert "alive" in nft.text[-1]
    assert len([r for r in caplog.records if "over netlink" in r.getMessage()]) == 1
