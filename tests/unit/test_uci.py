# micropython: run
"""passthrough/uci.py: UCI parsing, quoting, byte-exact round trips and minimal edits (pure; the
native commit path too). The `uci` program path is tested in tests/test_openwrt_pkg.py."""
import os

from passthrough import uci
from passthrough import config as C

MESSY = (
    "# /etc/config/passthrough: hand edited\n"
    "package passthrough\n"
    "\n"
    "config passthrough 'global'\n"
    "\toption enabled '1'\t# master switch\n"
    "    option l2tp_passthrough \"0\"\n"
    "\toption ipsec_passthrough yes\n"
    "\toption lan_device 'br-'\"lan\"\n"
    "\toption note 'it'\\''s \"quoted\" # not a comment'\n"
    "\tlist extra 'a b'\n"
    "\tlist extra c\\ d\n"
    "\n"
    "# two rules, anonymous\n"
    "config rule\n"
    "\toption name 'first'; option dest lan\n"
    "c rule\n"
    "\to name second\n"
    "\tl port 500\n"
    "\tl port \\\n"
    "4500\n"
    "config other named_one\n"
    "\toption empty ''\n"
    "\toption crlf 'x'\r\n"
    "\t# trailing comment, no newline at the end"
)


def changed_lines(a, b):
    """Indices of lines that differ, for texts with the same number of lines."""
    la, lb = a.split("\n"), b.split("\n")
    assert len(la) == len(lb), (la, lb)
    return [i for i in range(len(la)) if la[i] != lb[i]]


def tmpdir(tag):
    base = (os.getenv("TMPDIR") if hasattr(os, "getenv") else None) or "/tmp"
    n = 0
    while True:
        d = "%s/pt-uci-%s-%d" % (base, tag, n)
        try:
            os.mkdir(d)
            return d
        except OSError:
            n += 1


def rmtree(d):
    for fn in os.listdir(d):
        os.remove(d + "/" + fn)
    os.rmdir(d)


def read(path):
    with open(path, "rb") as f:
        return f.read().decode()


def write(path, text):
    with open(path, "wb") as f:
        f.write(text.encode())


def raises(fn, *args):
    try:
        fn(*args)
    except uci.UciError as e:
        return str(e)
    raise AssertionError("no UciError")


def test_round_trip_is_byte_identical():
    p = uci.parse(MESSY)
    assert p.text() == MESSY
    for text in ("", "\n", "config a\n", "config a", "\n\n# x\n\n", render_sample()):
        assert uci.parse(text).text() == text


def render_sample():
    return C.render_uci(C.Config({"l2tp_passthrough": "0", "wan_device": "eth1"}))


def test_values_quotes_escapes_and_abbreviations():
    p = uci.parse(MESSY)
    assert p.package == "passthrough"
    g = p.section("global")
    assert g.type == "passthrough" and not g.anonymous
    assert g.get("enabled") == "1"
    assert g.get("l2tp_passthrough") == "0"
    assert g.get("ipsec_passthrough") == "yes"
    assert g.get("lan_device") == "br-lan"  # adjacent quoted parts concatenate
    assert g.get("note") == "it's \"quoted\" # not a comment"
    assert g.get("extra") == ["a b", "c d"]
    assert g.options()["enabled"] == "1" and "extra" not in g.options()
    assert g.lists() == {"extra": ["a b", "c d"]}
    assert p.get("@rule[0]", "name") == "first" and p.get("@rule[0]", "dest") == "lan"  # ';' separates
    assert p.get("@rule[1]", "port") == ["500", "4500"]  # 'l' = list, backslash-newline continues
    assert p.get("named_one", "empty") == "" and p.get("named_one", "crlf") == "x"
    assert p.get("named_one") == "other"
    assert p.get("missing", "x", "dflt") == "dflt" and p.get("global", "nope") is None


def test_anonymous_sections():
    p = uci.parse(MESSY)
    r0, r1 = p.section("@rule[0]"), p.section("@rule[1]")
    assert r0.anonymous and r1.anonymous and r0.name != r1.name
    assert r0.name.startswith("cfg") and len(r0.name) == 9
    assert p.section("@rule[-1]") is r1 and p.section("@rule[-2]") is r0
    assert p.section("@rule[2]") is None and p.section("@nothing[0]") is None
    assert p.section(r1.name) is r1
    # names are a function of the file, so another process computes the same ones
    assert uci.parse(MESSY).section("@rule[1]").name == r1.name
    assert [s.name for s in p.find("rule")] == [r0.name, r1.name]
    assert "bad section" in raises(p.section, "@rule")


def test_set_existing_option_changes_one_line_and_keeps_comment():
    p = uci.parse(MESSY)
    p.set("global", "enabled", "0")
    new = p.text()
    assert changed_lines(MESSY, new) == [4]
    assert new.split("\n")[4] == "\toption enabled '0'\t# master switch"
    p.set("named_one", "crlf", "y")  # a CRLF line stays CRLF
    assert p.text().split("\n")[22] == "\toption crlf 'y'\r"
    p.set("global", "l2tp_passthrough", "1")  # four-space indentation kept
    assert p.text().split("\n")[5] == "    option l2tp_passthrough '1'"
    assert changed_lines(MESSY, p.text()) == [4, 5, 22]
    assert uci.parse(p.text()).get("global", "enabled") == "0"


def test_set_quotes_like_uci():
    for value in ("plain", "with space", "it's", "'", "''", "a\\b", 'd"q', "#hash", "semi;colon", "",
                  "tab\there", "x'\\''y", "ünïcödé"):
        p = uci.parse("config t 's'\n")
        p.set("s", "v", value)
        assert uci.parse(p.text()).get("s", "v") == value, (value, p.text())
    p = uci.parse("config t 's'\n")
    p.set("s", "v", "it's")
    assert p.text() == "config t 's'\n\toption v 'it'\\''s'\n"
    assert uci.quote("it's") == "'it'\\''s'"


def test_new_option_goes_to_the_end_of_its_section():
    p = uci.parse(MESSY)
    p.set("global", "wan_device", "eth1")
    lines = p.text().split("\n")
    old = MESSY.split("\n")
    assert lines[11] == "\toption wan_device 'eth1'"  # after the last list line of 'global'
    assert lines[:11] == old[:11] and lines[12:] == old[11:]
    p = uci.parse("config a 'x'\n  option k '1'\n\nconfig b 'y'\n")
    p.set("x", "n", "2")
    assert p.text() == "config a 'x'\n  option k '1'\n  option n '2'\n\nconfig b 'y'\n"
    p.set("y", "m", "3")
    assert p.text().endswith("config b 'y'\n\toption m '3'\n")


def test_statement_sharing_a_line_is_split_only_when_touched():
    p = uci.parse(MESSY)
    p.set("@rule[0]", "dest", "wan")
    lines = p.text().split("\n")
    assert lines[14] == "\toption name 'first'" and lines[15] == "\toption dest 'wan'"
    assert lines[:14] == MESSY.split("\n")[:14] and lines[16:] == MESSY.split("\n")[15:]
    assert uci.parse(p.text()).get("@rule[0]", "name") == "first"


def test_delete_option_and_section():
    p = uci.parse(MESSY)
    p.delete("global", "note")
    assert p.text() == MESSY.replace("\toption note 'it'\\''s \"quoted\" # not a comment'\n", "")
    p.delete("global", "extra")  # every list line of it
    assert p.get("global", "extra") is None and "list extra" not in p.text()
    p = uci.parse(MESSY)
    p.delete("@rule[1]")
    assert p.section("@rule[1]") is None and p.get("@rule[0]", "name") == "first"
    assert "second" not in p.text() and "4500" not in p.text()
    assert "# two rules, anonymous" in p.text() and p.get("named_one", "crlf") == "x"
    assert "no section" in raises(p.delete, "nope")


def test_lists():
    p = uci.parse("config t 's'\n\toption o 'one'\n\tlist l 'a'\n\toption z 'end'\n")
    p.add_list("s", "l", "b")
    assert p.text() == "config t 's'\n\toption o 'one'\n\tlist l 'a'\n\tlist l 'b'\n\toption z 'end'\n"
    p.add_list("s", "o", "two")  # an option becomes a list, as in libuci
    assert p.get("s", "o") == ["one", "two"]
    p.del_list("s", "l", "a")
    assert p.get("s", "l") == ["b"]
    p.set("s", "l", ["x", "y z"])
    assert p.get("s", "l") == ["x", "y z"]
    assert "\tlist l 'x'\n\tlist l 'y z'\n" in p.text()
    p.set("s", "l", "single")
    assert p.get("s", "l") == "single"
    assert uci.parse("config t\n\tlist a 1\n\toption a 2\n").get("@t[0]", "a") == "2"
    assert uci.parse("config t\n\toption a 1\n\tlist a 2\n").get("@t[0]", "a") == ["1", "2"]


def test_add_and_retype_sections():
    p = uci.parse("# only a comment")
    name = p.add("rule")
    p.set(name, "name", "r")
    assert p.text() == "# only a comment\n\nconfig rule\n\toption name 'r'\n"
    assert p.add("rule", "named") == "named"
    assert p.text().endswith("\toption name 'r'\n\nconfig rule 'named'\n")
    assert "exists" in raises(p.add, "rule", "named")
    assert uci.parse("").add("x") and uci.parse("").text() == ""
    q = uci.parse("")
    q.add("passthrough", "global")
    assert q.text() == "config passthrough 'global'\n"
    q.set_section("global", "other")
    assert q.text() == "config other 'global'\n" and q.get("global") == "other"
    q.set_section("fresh", "passthrough")
    assert q.get("fresh") == "passthrough"
    merged = uci.parse("config t 'n'\n\toption a 1\nconfig t 'n'\n\toption b 2\n")
    assert len(merged.sections) == 1 and merged.get("n", "a") == "1" and merged.get("n", "b") == "2"
    merged.set_section("n", "u")  # a section declared twice is retyped everywhere
    assert merged.get("n") == "u" and merged.text().count("config u 'n'") == 2
    merged.set("n", "c", "3")  # a new option goes to the end of its last block
    assert merged.text().endswith("\toption b 2\n\toption c '3'\n")


def test_errors_name_the_line():
    assert "line 3: unterminated quote" in raises(uci.parse, "config a\n\toption x 'ok'\n\toption y 'open\n")
    assert "line 2: unterminated quote" in raises(uci.parse, 'config a\n\toption y "open\n')
    assert "line 1: 'option' outside a config section" in raises(uci.parse, "option enabled '1'\n")
    assert "line 2: unknown keyword 'bogus'" in raises(uci.parse, "config a\nbogus line\n")
    assert "line 2: 'option' takes a name and one value" in raises(uci.parse, "config a\noption x\n")
    assert "line 2: 'list' takes a name and one value" in raises(uci.parse, "config a\nlist x 1 2\n")
    assert "line 1: 'config' takes a type" in raises(uci.parse, "config\n")
    assert "line 2: invalid option name 'a-b'" in raises(uci.parse, "config a\noption a-b 1\n")
    assert "line 1: invalid section name 'x.y'" in raises(uci.parse, "config a 'x.y'\n")
    assert "line 5" in raises(uci.parse, "\n\n# c\nconfig a\n option 'x y' 1\n")
    e = None
    try:
        uci.parse("config a\n\tlist\n")
    except uci.UciError as err:
        e = err
    assert e is not None and e.lineno == 2
    p = uci.parse("config a 's'\n")
    assert "invalid option name" in raises(p.set, "s", "bad name", "1")
    assert "no section" in raises(p.set, "nope", "x", "1")


def test_config_uses_this_parser():
    cfg = C.load_text(MESSY.replace("\toption note", "\t# option note"), "uci")
    assert cfg.enabled and cfg.l2tp_passthrough is False and cfg.lan_device == "br-lan"
    secs = C.parse_uci(MESSY)
    assert [s["type"] for s in secs] == ["passthrough", "rule", "rule", "other"]
    assert secs[1]["name"] is None and secs[3]["name"] == "named_one"
    assert secs[2]["lists"] == {"port": ["500", "4500"]}
    try:
        C.load_text("config passthrough 'global'\n\toption enabled 'x\n", "uci", "/etc/config/passthrough")
    except C.ConfigError as e:
        assert "/etc/config/passthrough" in str(e) or "line 2" in str(e), str(e)
    else:
        raise AssertionError("no ConfigError")


def test_native_commit_is_atomic_minimal_and_replays_on_the_current_file():
    d = tmpdir("commit")
    try:
        path = d + "/passthrough"
        write(path, MESSY)
        u = uci.Uci(d, cli=False)
        assert u.cli is None
        assert u.get("passthrough", "global", "enabled") == "1"
        u.commit("passthrough")  # nothing pending: same bytes
        assert read(path) == MESSY
        u.set("passthrough", "global", "enabled", "0")
        assert u.get("passthrough", "global", "enabled") == "0"  # pending changes are visible
        assert read(path) == MESSY  # ... but not written before commit
        assert u.changes("passthrough") == [("set", "global", "enabled", "0")]
        # someone else edits the file meanwhile: commit replays our change on top of theirs
        write(path, MESSY.replace("option ipsec_passthrough yes", "option ipsec_passthrough no"))
        u.commit("passthrough")
        got = read(path)
        assert changed_lines(MESSY, got) == [4, 6]
        assert "option ipsec_passthrough no" in got and "\toption enabled '0'\t# master switch" in got
        assert u.changes("passthrough") == []
        assert sorted(os.listdir(d)) == ["passthrough"]  # no temporary file left behind
        # anonymous section added natively keeps its name after the commit
        name = u.add("passthrough", "rule")
        u.set("passthrough", name, "name", "third")
        u.add_list("passthrough", name, "port", "1701")
        u.commit("passthrough")
        assert u.get("passthrough", name, "name") == "third"
        assert u.get("passthrough", "@rule[-1]", "port") == ["1701"]
        assert u.sections("passthrough", "rule")[-1] == name
        assert u.get_all("passthrough", name) == {".type": "rule", ".name": name, ".anonymous": True,
                                                  "name": "third", "port": ["1701"]}
        u.delete("passthrough", name)
        u.revert("passthrough")
        assert u.get("passthrough", name, "name") == "third"
        # a new config file is created
        u.set("fresh", "x", None, "t")
        u.set("fresh", "x", "k", "v")
        u.commit("fresh")
        assert read(d + "/fresh") == "config t 'x'\n\toption k 'v'\n"
        u.delete("passthrough", "global", "note")  # not a passthrough option: config refuses it
        u.commit("passthrough")
        assert C.load(path).enabled is False
    finally:
        rmtree(d)
