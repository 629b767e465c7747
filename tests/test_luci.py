"""luci-app-passthrough: the JS view (syntax, and run under node with stand-ins for LuCI's classes,
loaded the way LuCI's loader does it, fed the rpcd plugin's replies), the menu and ACL JSON
(hand-written schema), the rpcd ucode plugin's shape, and that the view, the menu, the ACL, the
plugin, the UCI defaults and the daemon's flow records agree with one another. The real LuCI stack
(rpcd running the plugin, uhttpd, Chromium) is tests/luci/."""
import json
import os
import re
import shutil
import subprocess

import pytest

from passthrough import cli
from passthrough import config as C
from passthrough.flows import Flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "openwrt_pkg", "luci-app-passthrough")
VIEW_DIR = os.path.join(APP, "htdocs", "luci-static", "resources", "view")
VIEW = os.path.join(VIEW_DIR, "passthrough.js")
MENU = os.path.join(APP, "root", "usr", "share", "luci", "menu.d", "luci-app-passthrough.json")
ACL = os.path.join(APP, "root", "usr", "share", "rpcd", "acl.d", "luci-app-passthrough.json")
PLUGIN = os.path.join(APP, "root", "usr", "share", "rpcd", "ucode", "luci.passthrough")
NODE = "/usr/bin/node"


def node():
    exe = NODE if os.access(NODE, os.X_OK) else shutil.which("node")
    assert exe, "node is needed for the LuCI view tests (apt-get install nodejs)"
    return exe


def view_source():
    with open(VIEW) as f:
        return f.read()


# --- the view under node ---------------------------------------------------------------------------
def test_view_syntax(tmp_path):
    src = view_source()
    assert src.startswith("'use strict';\n")
    # a LuCI view is a function body (it ends in `return view.extend(...)`): check it as LuCI runs it
    wrapped = tmp_path / "view.js"
    wrapped.write_text("(function() {\n%s\n});\n" % src)
    r = subprocess.run([node(), "--check", str(wrapped)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    bare = tmp_path / "bare.js"  # node reads a .js file as CommonJS, also a function body
    bare.write_text(src)
    r = subprocess.run([node(), "--check", str(bare)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "broken.js"  # and the check does catch a syntax error
    broken.write_text(src.replace("return view.extend({", "return view.extend({{", 1))
    r = subprocess.run([node(), "--check", str(broken)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "SyntaxError" in r.stderr


HARNESS = r"""
'use strict';
const fs = require('fs');
const src = fs.readFileSync(process.argv[2], 'utf8');
const scenarios = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const out = { options: [], tabs: [], polls: [], calls: [], declared: [], tables: [], summaries: [], sections: [] };

global._ = (s) => s;
String.prototype.format = function() {
	const args = Array.prototype.slice.call(arguments);
	return this.replace(/%([sd])/g, (m, t) => { const v = args.shift(); return t == 'd' ? String(Math.floor(+v)) : String(v); });
};
function mk(tag, attrs, children) {
	const n = { tag: tag, attrs: attrs || {}, children: children == null ? [] : [].concat(children) };
	Object.defineProperty(n, 'firstChild', { get: () => n.children[0] || null });
	n.removeChild = (c) => { n.children.splice(n.children.indexOf(c), 1); return c; };
	n.appendChild = (c) => { n.children.push(c); return c; };
	return n;
}
const E = global.E = function(tag, attrs, children) {
	if (Array.isArray(attrs) || typeof(attrs) == 'string') { children = attrs; attrs = {}; }
	if (Array.isArray(tag)) return mk('fragment', {}, tag.concat(children == null ? [] : children));
	return mk(tag, attrs, children);
};
function text(node) {
	if (node == null) return '';
	if (typeof(node) == 'string') return node;
	return (node.children || []).map(text).join('');
}
global.cbi_update_table = (table, rows, placeholder) => out.tables.push({ id: table.attrs.id, rows: rows, placeholder: text(placeholder) });

class AbstractValue {
	constructor(name, title, description) { this.name = name; this.title = title; this.description = description; this.values = []; }
	value(key, title) { this.values.push(key); }
}
class Flag extends AbstractValue {}
class Value extends AbstractValue {}
class ListValue extends AbstractValue {}
class DeviceSelect extends Value {}
class NamedSection {
	constructor(name, type) { this.name = name; this.type = type; }
	tab(name, title) { out.tabs.push(name); }
	taboption(tab, cls, name, title, description) { return this.option(cls, name, title, description, tab); }
	option(cls, name, title, description, tab) {
		const o = new cls(name, title, description);
		o.widget = cls.name; o.tab = tab || null;
		out.options.push(o);
		return o;
	}
}
class Map {
	constructor(config, title, description) { out.map = { config: config, title: title }; }
	section(cls, name, type) {
		const s = new cls(name, type);
		out.sections.push({ cls: cls.name, name: name, type: type });
		return s;
	}
	render() { return Promise.resolve(E('div', { id: 'map' }, [])); }
}
const form = { Map, NamedSection, Flag, Value, ListValue, TypedSection: class {}, DummyValue: class {} };
const widgets = { DeviceSelect };
let scenario = null;
// rpc.declare as LuCI's: returns a function that performs the ubus call; a scenario is either
// the plugin's reply or { reject: message } (the call itself failed, e.g. ACL)
const rpc = { declare: (opts) => {
	out.declared.push({ object: opts.object, method: opts.method, params: opts.params || [], expect: opts.expect });
	return function() {
		out.calls.push([opts.object, opts.method].concat(Array.prototype.slice.call(arguments)));
		return scenario.reject ? Promise.reject(new Error(scenario.reject)) : Promise.resolve(scenario.reply);
	};
} };
const poll = { add: (fn, interval) => out.polls.push({ fn: fn, interval: interval }) };
const view = { extend: (proto) => proto };
const env = { view, form, rpc, poll, 'tools.widgets': widgets };

// LuCI's loader: the file is the body of a function whose parameters are the required classes
const requires = [];
src.replace(/^'require ([\w.]+)(?: as (\w+))?';$/mg, (m, mod, alias) => { requires.push([mod, alias || mod.split('.').pop()]); });
for (const [mod] of requires) if (!(mod in env)) throw new Error('unexpected require ' + mod);
const factory = new Function(...requires.map(r => r[1]), src);
const v = factory(...requires.map(r => env[r[0]]));

(async () => {
	out.viewMethods = Object.keys(v).sort();
	scenario = scenarios[0];
	const loaded = await v.load();        // LuCI: render(await load())
	const el = await v.render(loaded);
	out.rendered = text(el);
	const summary = (function find(n) {
		if (!n || typeof(n) != 'object') return null;
		if (n.attrs && n.attrs.id == 'passthrough_summary') return n;
		for (const c of n.children || []) { const f = find(c); if (f) return f; }
		return null;
	})(el);
	out.summaries.push(text(summary));
	for (const sc of scenarios) {
		scenario = sc;
		await out.polls[0].fn();
		out.summaries.push(text(summary));
	}
	out.options = out.options.map(o => ({ name: o.name, widget: o.widget, tab: o.tab, default: o.default === undefined ? null : o.default,
		rmempty: o.rmempty === undefined ? null : o.rmempty, datatype: o.datatype || null, values: o.values,
		placeholder: o.placeholder || null }));
	out.polls = out.polls.map(p => ({ interval: p.interval }));
	console.log(JSON.stringify(out));
})().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
"""


def daemon_flows():
    """Flow records as the daemon's `status` command sends them (Flow.as_dict), + offloaded."""
    now = 1000.0
    esp = Flow("esp", "192.168.1.10", "203.0.113.2", 0xc0ffee01, now - 12.6, zone=4097)
    esp.key_out, esp.packets, esp.state = 0x11112222, 40, "established"
    l2tp = Flow("l2tp", "192.168.1.11", "203.0.113.2", 4711, now - 3, zone=4098)
    l2tp.lan_port, l2tp.wan_port, l2tp.remote_port, l2tp.packets = 1701, 1701, 1701, 7
    natt = Flow("natt", "192.168.1.12", "203.0.113.3", 0xabcdef01, now - 1, zone=4099)
    natt.lan_port, natt.wan_port, natt.remote_port = 4500, 61000, 4500
    rows = [f.as_dict(now) for f in (esp, l2tp, natt)]
    rows[0]["offloaded"] = True
    return rows


SUMMARY = {"backend": "nft", "queue_num": 7100, "enabled": True, "l2tp_passthrough": False, "ipsec_passthrough": True,
           "pptp_passthrough": True, "flows": 3, "pending": 1, "hosts": {"192.168.1.10": 4097, "192.168.1.11": 4098},
           "errors": 0, "op_failures": 0, "uptime": 61.4, "offload": {"active": False, "note": "not requested"},
           "natt_ports": {"configured": "auto", "effective": "distinct", "distinct_in_use": 1, "pairs": 2,
                          "range": "14500-15523", "exhausted": 0}}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    d = tmp_path_factory.mktemp("luci")
    (d / "harness.js").write_text(HARNESS)
    scenarios = [
        # the plugin's getStatus reply with flows
        {"reply": {"flows": daemon_flows(), "summary": SUMMARY}},
        # no daemon: the plugin's clear error
        {"reply": {"error": "passthrough daemon not running (/var/run/passthrough.sock: connect(): No such file "
                            "or directory)", "socket": "/var/run/passthrough.sock"}},
        # daemon fine, no flows
        {"reply": {"flows": [], "summary": dict(SUMMARY, flows=0, hosts={},
                                                flowtables=[["inet", "fw4", "ft", ["eth0", "eth1"]]])}},
        # the call itself fails (ACL, rpcd down)
        {"reject": "Permission denied"},
        # garbage in the reply does not break the table
        {"reply": {"flows": [None, "x", {"kind": "ike"}], "summary": None}},
    ]
    (d / "scenarios.json").write_text(json.dumps(scenarios))
    r = subprocess.run([node(), str(d / "harness.js"), VIEW, str(d / "scenarios.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_view_builds_the_form(harness):
    assert harness["map"]["config"] == "passthrough"
    assert harness["sections"] == [{"cls": "NamedSection", "name": "global", "type": "passthrough"}]
    opts = {o["name"]: o for o in harness["options"]}
    for flag in ("enabled", "l2tp_passthrough", "ipsec_passthrough", "pptp_passthrough"):
        o = opts[flag]
        assert o["widget"] == "Flag" and o["default"] == "1" and o["rmempty"] is False, o
    assert opts["lan_device"]["widget"] == "DeviceSelect" and opts["wan_device"]["widget"] == "DeviceSelect"
    assert opts["log_level"]["widget"] == "ListValue"
    o = opts["offload"]  # the BPF fast path: every mode the daemon knows, on the advanced tab
    assert o["widget"] == "ListValue" and o["tab"] == "advanced" and o["default"] == "auto", o
    assert sorted(o["values"]) == sorted(C.CHOICE_OPTIONS["offload"]), o
    o = opts["natt_ports"]  # the NAT-T port policy: a select with every mode, auto by default
    assert o["widget"] == "ListValue" and o["tab"] == "general" and o["default"] == "auto", o
    assert sorted(o["values"]) == sorted(C.CHOICE_OPTIONS["natt_ports"]), o
    assert set(harness["tabs"]) == {o["tab"] for o in harness["options"]} == {"general", "advanced"}


def test_every_option_the_view_writes_is_a_passthrough_option(harness):
    names = [o["name"] for o in harness["options"]]
    assert len(names) == len(set(names))
    for n in names:
        assert n in C.DEFAULTS, n
    # the same by reading the source: every form.X / widgets.X option's second argument
    static = re.findall(r"\.(?:tab)?option\(\s*(?:'\w+'\s*,\s*)?(?:form|widgets)\.\w+\s*,\s*'(\w+)'", view_source())
    assert static == names


def test_view_defaults_and_ranges_match_the_config(harness):
    for o in harness["options"]:
        name = o["name"]
        default = C.DEFAULTS[name]
        shown = o["default"] if o["default"] is not None else o["placeholder"]
        if o["widget"] == "Flag":
            assert shown == ("1" if default else "0"), name
        elif shown is not None:
            assert C.Config({name: shown}).values[name] == default, name
        if name in C.CHOICE_OPTIONS:
            assert o["values"] and set(o["values"]) <= set(C.CHOICE_OPTIONS[name]), name
            assert default in o["values"]
        if name in C.INT_OPTIONS:
            assert o["datatype"] == "range(%d,%d)" % C.INT_OPTIONS[name], name


def test_flow_table_from_luci_passthrough(harness):
    assert harness["declared"] == [{"object": "luci.passthrough", "method": "getStatus", "params": [], "expect": {}}]
    assert harness["polls"] == [{"interval": 5}]
    assert harness["calls"][0] == ["luci.passthrough", "getStatus"]  # load(), then each poll
    assert len(harness["calls"]) == 6
    tables = [t for t in harness["tables"] if t["id"] == "passthrough_flows"]
    assert len(tables) == 6  # the first render from load(), then one per poll
    rows = tables[0]["rows"]
    assert rows == tables[1]["rows"]
    assert rows[0] == ["ESP", "192.168.1.10", "-", "203.0.113.2", "c0ffee01", "established", "4097", "yes", "40"]
    assert rows[1] == ["L2TP", "192.168.1.11", "1701", "203.0.113.2:1701", "4711", "up", "4098", "no", "7"]
    assert rows[2] == ["ESP-in-UDP", "192.168.1.12", "4500 \u2192 61000", "203.0.113.3:4500", "abcdef01", "up", "4099",
                       "no", "0"]
    assert "passthrough daemon not running" in tables[2]["placeholder"] and tables[2]["rows"] == []
    assert "No VPN flows" in tables[3]["placeholder"] and tables[3]["rows"] == []
    assert "Permission denied" in tables[4]["placeholder"] and tables[4]["rows"] == []
    assert tables[5]["rows"] == [["IKE", "-", "-", "-", "-", "-", "-", "no", "-"]]
    assert "Active VPN flows" in harness["rendered"] and "Daemon status" in harness["rendered"]


def test_summary_box(harness):
    first = harness["summaries"][0]
    assert "enabled" in first and "on / off / on" in first  # ipsec / l2tp / pptp
    assert "3 (1 pending)" in first and "nft, queue 7100" in first and "off (not requested)" in first
    assert "61s" in first
    assert "NAT-T portsdistinct (setting: auto), 1 distinct in use" in first  # the mode in force
    assert "passthrough daemon not running" in harness["summaries"][2]
    assert "0 (1 pending)" in harness["summaries"][3] and "LAN hosts with a VPN0" in harness["summaries"][3]
    assert "Flowtablesnone" in first  # fw4's software flow offloading: off, or on and named
    assert "Flowtablesinet fw4 ft: bypasses the zones" in harness["summaries"][3]
    assert "Permission denied" in harness["summaries"][4]
    assert "Passthrough" in harness["summaries"][5]  # a summary of null: defaults, no exception


def test_view_fields_are_daemon_flow_fields():
    m = re.search(r"var FLOW_FIELDS = \[([^\]]*)\]", view_source())
    fields = re.findall(r"'(\w+)'", m.group(1))
    record = daemon_flows()[0]
    assert set(fields) <= set(record), set(fields) - set(record)
    # what the CLI's status table shows is in the page too (age/idle are not: they change each poll)
    assert set(cli.STATUS_COLUMNS) - {"age"} <= set(fields)


# --- JSON files ---------------------------------------------------------------------------------------
def check(value, schema, where="$"):
    """A small JSON-schema-like checker: type, required, properties, additional, keys, items, enum."""
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int}
    if t:
        assert isinstance(value, types[t]) and not (t == "integer" and isinstance(value, bool)), \
            "%s: expected %s, got %r" % (where, t, value)
    if "enum" in schema:
        assert value in schema["enum"], "%s: %r not in %r" % (where, value, schema["enum"])
    if "pattern" in schema:
        assert re.match(schema["pattern"], value), "%s: %r does not match %s" % (where, value, schema["pattern"])
    if t == "object":
        for k in schema.get("required", ()):
            assert k in value, "%s: missing %r" % (where, k)
        props = schema.get("properties", {})
        for k, v in value.items():
            if "keys" in schema:
                assert re.match(schema["keys"], k), "%s: bad key %r" % (where, k)
            if k in props:
                check(v, props[k], "%s.%s" % (where, k))
            else:
                extra = schema.get("additional", False)
                assert extra is not False, "%s: unexpected key %r" % (where, k)
                check(v, extra, "%s.%s" % (where, k))
    if t == "array":
        if schema.get("min"):
            assert len(value) >= schema["min"], "%s: too short" % where
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), "%s[%d]" % (where, i))


MENU_SCHEMA = {
    "type": "object", "keys": r"^admin(/[a-z0-9_-]+)+$",
    "additional": {
        "type": "object", "required": ["title", "action"],
        "properties": {
            "title": {"type": "string"},
            "order": {"type": "integer"},
            "action": {"type": "object", "required": ["type", "path"], "properties": {
                "type": {"type": "string", "enum": ["view", "template", "alias", "firstchild", "call", "function"]},
                "path": {"type": "string", "pattern": r"^[a-z0-9_/-]+$"}}},
            "depends": {"type": "object", "properties": {
                "acl": {"type": "array", "min": 1, "items": {"type": "string"}},
                "uci": {"type": "object", "additional": {"type": "boolean"}}}},
        }},
}

PERMS = {"type": "array", "min": 1, "items": {"type": "string", "enum": ["read", "write", "exec", "list"]}}
ACL_SCOPE = {"type": "object", "properties": {
    "uci": {"type": "array", "items": {"type": "string"}},
    "file": {"type": "object", "additional": PERMS},
    "ubus": {"type": "object", "additional": {"type": "array", "items": {"type": "string"}}},
    "cgi-io": {"type": "array", "items": {"type": "string"}}}}
ACL_SCHEMA = {
    "type": "object", "keys": r"^[a-z0-9_-]+$",
    "additional": {"type": "object", "required": ["description"], "properties": {
        "description": {"type": "string"}, "read": ACL_SCOPE, "write": ACL_SCOPE}},
}


def load(path):
    with open(path) as f:
        return json.load(f)


def test_json_files_match_their_schema():
    check(load(MENU), MENU_SCHEMA)
    check(load(ACL), ACL_SCHEMA)
    with pytest.raises(AssertionError):  # the checker does reject
        check({"admin/services/x": {"title": "x", "action": {"type": "viewz", "path": "x"}}}, MENU_SCHEMA)
    with pytest.raises(AssertionError):
        check({"app": {"description": "x", "read": {"file": {"/bin/sh": ["run"]}}}}, ACL_SCHEMA)


def test_menu_points_at_the_view_and_the_acl():
    menu = load(MENU)
    assert list(menu) == ["admin/services/passthrough"]
    entry = menu["admin/services/passthrough"]
    assert entry["action"]["type"] == "view"
    assert os.path.isfile(os.path.join(VIEW_DIR, entry["action"]["path"] + ".js"))
    assert entry["depends"]["acl"] == list(load(ACL))
    assert entry["depends"]["uci"] == {"passthrough": True}


def plugin_methods():
    """Method names of the rpcd ucode plugin's `luci.passthrough` object (its `methods` table)."""
    with open(PLUGIN) as f:
        src = f.read()
    assert "return { 'luci.passthrough': methods };" in src
    body = src[src.index("const methods = {"):]
    return re.findall(r"^\t(\w+): \{$", body, re.M)


def test_acl_grants_exactly_what_the_view_runs():
    acl = load(ACL)["luci-app-passthrough"]
    src = view_source()
    declared = re.findall(r"rpc\.declare\(\{\s*object: '([\w.]+)',\s*method: '(\w+)'", src)
    assert declared == [("luci.passthrough", "getStatus")]
    # ubus: the plugin's methods, all read-only; nothing through the file plugin's exec any more
    assert acl["read"] == {"ubus": {"luci.passthrough": plugin_methods()}, "uci": ["passthrough"]}
    assert set(m for _, m in declared) <= set(plugin_methods()) == {"getStatus", "getStats"}
    assert acl["write"] == {"uci": ["passthrough"]}
    assert not re.search(r"\bfs\.|'require fs'", src)


def test_plugin_is_a_ucode_rpcd_plugin():
    """In luci-app-upnp's style: returns { '<object>': { method: { call: fn } } }, reads the
    daemon's control socket over AF_UNIX with the socket module, never throws into rpcd."""
    with open(PLUGIN) as f:
        src = f.read()
    assert src.count("'use strict';") == 1
    assert "import * as socket from 'socket';" in src and "socket.AF_UNIX" in src
    assert "'/var/run/passthrough.sock'" in src  # the daemon's default (config.DEFAULTS)
    assert C.DEFAULTS["control_socket"] == "/var/run/passthrough.sock"
    assert "control_socket" in src  # and the uci option that moves it
    assert src.count("call: guarded(") == len(plugin_methods())
    for cmd in ("'status'", "'stats'"):
        assert "ask(%s)" % cmd in src


def test_view_config_and_uci_file_agree():
    """The shipped /etc/config/passthrough sets what the view shows, with the same defaults."""
    shipped = C.load(os.path.join(ROOT, "openwrt_pkg", "passthrough", "files", "passthrough.config"))
    assert shipped == C.Config()
    flags = re.findall(r"form\.Flag, '(\w+)'", view_source())
    text = open(os.path.join(ROOT, "openwrt_pkg", "passthrough", "files", "passthrough.config")).read()
    for f in flags:
        assert re.search(r"^\toption %s '1'$" % f, text, re.M), f
