# micropython: run
"""Config: UCI parsing/quoting, validation errors, YAML-free paths (MicroPython-safe)."""
from passthrough import config as C

SAMPLE = """
# /etc/config/passthrough
config passthrough 'global'
\toption enabled '1'
\toption l2tp_passthrough "0"   # switched off in LuCI
\toption ipsec_passthrough yes
\toption lan_device 'br-lan'
\toption wan_device wan
\toption queue_num '0x20'
\tlist ignored_list 'a b'

config other 'x'
\toption foo 'bar'
"""


def raises(fn, *args):
    try:
        fn(*args)
    except C.ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError")


def test_uci_values_and_types():
    cfg = C.load_text(SAMPLE, "uci")
    assert cfg.enabled is True
    assert cfg.l2tp_passthrough is False
    assert cfg.ipsec_passthrough is True
    assert cfg.pptp_passthrough is True  # default
    assert cfg.queue_num == 32
    assert cfg.kind_enabled("l2tp") is False and cfg.kind_enabled("ipsec") is True


def test_disabled_turns_every_family_off():
    cfg = C.Config({"enabled": "0"})
    assert not cfg.kind_enabled("l2tp") and not cfg.kind_enabled("ipsec") and not cfg.kind_enabled("pptp")


def test_uci_tokens_quotes_and_escapes():
    assert C.uci_tokens("option x 'a b'", 1) == ["option", "x", "a b"]
    assert C.uci_tokens('option x "a \\"q\\" b"', 1) == ["option", "x", 'a "q" b']
    assert C.uci_tokens("option x 'it'\\''s'", 1) == ["option", "x", "it's"]
    assert C.uci_tokens("  # only a comment", 1) == []
    assert "unterminated" in raises(C.uci_tokens, "option x 'open", 7)


def test_bad_values_name_the_option():
    assert "l2tp_passthrough" in raises(C.Config, {"l2tp_passthrough": "maybe"})
    assert "queue_num" in raises(C.Config, {"queue_num": "70000"})
    assert "udp_timeout" in raises(C.Config, {"udp_timeout": "30"})  # shorter than L2TP HELLO
    assert "lan_device" in raises(C.Config, {"lan_device": "br lan"})
    assert "mark_bit" in raises(C.Config, {"mark_bit": "3"})
    assert "steer_mark_bit" in raises(C.Config, {"steer_mark_bit": "0x30000000"})
    assert "different bits" in raises(C.Config, {"steer_mark_bit": "0x10000000"})
    assert "unknown option" in raises(C.Config, {"l2tp_pasthrough": "1"})
    assert "zone_base" in raises(C.Config, {"zone_base": "65500", "max_hosts": "100"})


def test_missing_section_and_syntax_errors():
    assert "no 'config passthrough" in raises(C.load_text, "config other 'x'\n", "uci")
    assert "line 2" in raises(C.load_text, "config passthrough 'global'\nbogus line\n", "uci")
    assert "outside" in raises(C.load_text, "option enabled '1'\n", "uci")


def test_render_roundtrip():
    cfg = C.load_text(SAMPLE, "uci")
    again = C.load_text(C.render_uci(cfg), "uci")
    assert again == cfg


def test_natt_ports_values_default_and_auto():
    assert C.Config({}).natt_ports == "auto" and C.Config({}).natt_ports_mode() == C.NATT_PORTS_AUTO
    assert C.NATT_PORTS_AUTO in ("preserve", "distinct")
    assert C.Config({"natt_ports": "preserve"}).natt_ports_mode() == "preserve"
    assert C.Config({"natt_ports": "distinct"}).natt_ports_mode() == "distinct"
    for bad in ("Distinct", "random", "", "1"):
        try:
            C.Config({"natt_ports": bad})
        except C.ConfigError as e:
            msg = str(e)
            assert "natt_ports" in msg and "preserve" in msg and "distinct" in msg and "auto" in msg, msg
            continue
        raise AssertionError("accepted %r" % bad)
    text = "config passthrough 'global'\n\toption natt_ports 'preserve'\n"
    cfg = C.load_text(text, "uci")
    assert cfg.natt_ports == "preserve" and C.load_text(C.render_uci(cfg), "uci") == cfg
