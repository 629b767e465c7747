"""Configuration: the UCI `global` section of /etc/config/passthrough (or the same keys in YAML).

Pure and MicroPython-compatible (YAML is only imported when a .yaml/.yml file is read).
A bad value raises ConfigError naming the option, the value and what is allowed; callers keep
the last good Config, so a typo in LuCI never takes the router's VPNs down.
"""
from passthrough import uci as ucimod

DEFAULTS = {
    "enabled": True,
    "l2tp_passthrough": True,
    "ipsec_passthrough": True,
    "pptp_passthrough": True,
    "lan_device": "br-lan",
    "wan_device": "wan",
    "queue_num": 7100,
    "queue_count": 1,
    "zone_base": 4096,
    "max_hosts": 256,
    "max_flows": 4096,
    "flows_per_host": 256,
    "udp_timeout": 180,
    "flow_timeout": 600,
    "pair_window": 30,
    "queue_limit_source": 100,
    "queue_limit_total": 1000,
    "mark_bit": 0x10000000,
    "steer_mark_bit": 0x20000000,
    "log_level": "info",
    "control_socket": "/var/run/passthrough.sock",
    "queue_backend": "auto",
    "offload": "auto",
    "natt_ports": "auto",
}

# What natt_ports 'auto' runs (passthrough/engine.py, nat/mapping.NattPorts). One constant, so
# the default can follow the interop matrix (tests/interop) without touching anything else.
NATT_PORTS_AUTO = "distinct"

BOOL_OPTIONS = ("enabled", "l2tp_passthrough", "ipsec_passthrough", "pptp_passthrough")
# option: (min, max); why: zones are 16 bit, queues 16 bit, ct timeouts must outlive L2TP HELLO (60 s)
INT_OPTIONS = {
    "queue_num": (0, 65535),
    "queue_count": (1, 64),
    "zone_base": (1, 65535),
    "max_hosts": (1, 16384),
    "max_flows": (16, 1000000),
    "flows_per_host": (1, 1000000),
    "udp_timeout": (120, 86400),
    "flow_timeout": (30, 86400),
    "pair_window": (1, 3600),
    "queue_limit_source": (1, 1000000),  # pkt/s one WAN source may send to the queue
    "queue_limit_total": (1, 1000000),   # pkt/s all WAN sources together
    "mark_bit": (1, 0x80000000),
    "steer_mark_bit": (1, 0x80000000),
}
CHOICE_OPTIONS = {
    "log_level": ("debug", "info", "notice", "warning", "err", "error"),
    # xt: the x_tables NFQUEUE target in passthrough's own chain, for kernels without nft_queue
    # ("iptables", the name of the older way, still means it)
    "queue_backend": ("auto", "nft", "xt", "iptables"),
    "offload": ("auto", "bpf", "off"),  # BPF fast path for learned data flows (nat/bpf.py)
    # NAT-T source ports of LAN hosts sharing a server: all keep 4500 (told apart by SPI), or
    # the first keeps 4500 and later ones get ports of their own (servers keying by address+port)
    "natt_ports": ("auto", "preserve", "distinct"),
}
STR_OPTIONS = ("lan_device", "wan_device", "control_socket")
TRUE_WORDS = ("1", "yes", "on", "true", "enabled")
FALSE_WORDS = ("0", "no", "off", "false", "disabled")


class ConfigError(ValueError):
    pass


class Config:
    """Validated settings; attributes named like the UCI options."""

    def __init__(self, values=None, source="defaults"):
        self.source = source
        merged = {}
        for k in DEFAULTS:
            merged[k] = DEFAULTS[k]
        if values:
            for k in values:
                merged[k] = values[k]
        self.values = validate(merged)
        for k in self.values:
            setattr(self, k, self.values[k])

    def kind_enabled(self, kind):
        """Is passthrough of this VPN family (l2tp, ipsec, pptp) allowed?"""
        return bool(self.enabled and self.values[kind + "_passthrough"])

    def natt_ports_mode(self):
        """The NAT-T port policy in force: 'preserve' or 'distinct' ('auto' resolved)."""
        mode = self.values["natt_ports"]
        return NATT_PORTS_AUTO if mode == "auto" else mode

    def as_dict(self):
        out = {}
        for k in self.values:
            out[k] = self.values[k]
        return out

    def __eq__(self, other):
        return isinstance(other, Config) and self.values == other.values


def _bool(name, v):
    if v is True or v is False:
        return v
    if isinstance(v, int):
        if v in (0, 1):
            return bool(v)
    elif isinstance(v, str):
        s = v.strip().lower()
        if s in TRUE_WORDS:
            return True
        if s in FALSE_WORDS:
            return False
    raise ConfigError("option %s: %r is not a boolean (use '0' or '1')" % (name, v))


def _int(name, v):
    lo, hi = INT_OPTIONS[name]
    n = None
    if isinstance(v, bool):
        n = None
    elif isinstance(v, int):
        n = v
    elif isinstance(v, str):
        s = v.strip().lower()
        try:
            n = int(s, 16) if s.startswith("0x") else int(s)
        except ValueError:
            n = None
    if n is None:
        raise ConfigError("option %s: %r is not an integer" % (name, v))
    if n < lo or n > hi:
        raise ConfigError("option %s: %d is out of range %d..%d" % (name, n, lo, hi))
    return n


def _devname(name, v):
    if not isinstance(v, str) or not v or len(v) > 15:
        raise ConfigError("option %s: %r is not a network device name (1-15 chars)" % (name, v))
    for ch in v:
        if not (ch.isalpha() or ch.isdigit() or ch in "-_.@"):
            raise ConfigError("option %s: %r has a character not allowed in a device name" % (name, v))
    return v


def validate(values):
    out = {}
    for k in values:
        v = values[k]
        if k in BOOL_OPTIONS:
            out[k] = _bool(k, v)
        elif k in INT_OPTIONS:
            out[k] = _int(k, v)
        elif k in CHOICE_OPTIONS:
            if not isinstance(v, str) or v not in CHOICE_OPTIONS[k]:
                raise ConfigError("option %s: %r is not one of %s" % (k, v, ", ".join(CHOICE_OPTIONS[k])))
            out[k] = "xt" if (k, v) == ("queue_backend", "iptables") else v
        elif k in ("lan_device", "wan_device"):
            out[k] = _devname(k, v)
        elif k in STR_OPTIONS:
            if not isinstance(v, str) or not v:
                raise ConfigError("option %s: %r must be a non-empty string" % (k, v))
            out[k] = v
        else:
            raise ConfigError("unknown option %r" % (k,))
    for k in ("mark_bit", "steer_mark_bit"):
        mb = out[k]
        if mb & (mb - 1):
            raise ConfigError("option %s: 0x%x must be a single bit" % (k, mb))
    if out["mark_bit"] == out["steer_mark_bit"]:
        raise ConfigError("options mark_bit and steer_mark_bit must be different bits")
    if out["zone_base"] + out["max_hosts"] > 65535:
        raise ConfigError("zone_base + max_hosts must stay below 65536 (conntrack zones are 16 bit)")
    return out


# --- UCI ---------------------------------------------------------------------------------------
# The syntax itself (quoting, escapes, comments, anonymous sections, lists) lives in
# passthrough/uci.py, which also writes files; these wrappers keep config's API and error type.
def uci_tokens(line, lineno):
    """Split one UCI line into words, honouring '...' and "..." quoting and backslash escapes."""
    try:
        return ucimod.line_words(line, lineno)
    except ucimod.UciError as e:
        raise ConfigError(str(e))


def parse_uci(text):
    """Parse UCI text into a list of sections: {'type', 'name', 'options': {}, 'lists': {}}
    (name None for anonymous sections)."""
    try:
        pkg = ucimod.parse(text)
    except ucimod.UciError as e:
        raise ConfigError(str(e))
    return [{"type": s.type, "name": None if s.anonymous else s.name, "options": s.options(), "lists": s.lists()}
            for s in pkg.sections]


def global_from_uci(text):
    """The options of `config passthrough 'global'` (else the first section of type passthrough)."""
    sections = parse_uci(text)
    chosen = None
    for s in sections:
        if s["type"] == "passthrough" and s["name"] == "global":
            chosen = s
            break
    if chosen is None:
        for s in sections:
            if s["type"] == "passthrough":
                chosen = s
                break
    if chosen is None:
        raise ConfigError("no 'config passthrough global' section")
    return chosen["options"]


def load_text(text, fmt, source="<text>"):
    if fmt == "yaml":
        import yaml  # only on full Linux routers; UCI is the OpenWrt path

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("%s: bad YAML: %s" % (source, e))
        if data is None:
            data = {}
        if isinstance(data, dict) and isinstance(data.get("global"), dict):
            data = data["global"]
        if not isinstance(data, dict):
            raise ConfigError("%s: YAML must be a mapping of option: value" % source)
        values = data
    else:
        values = global_from_uci(text)
    try:
        return Config(values, source)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (source, e))


def load(path):
    """Read and validate a config file (.yaml/.yml as YAML, anything else as UCI)."""
    fmt = "yaml" if path.endswith(".yaml") or path.endswith(".yml") else "uci"
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e))
    return load_text(text, fmt, path)


def render_uci(cfg):
    """UCI text of a Config (defaults included), as /etc/config/passthrough holds it."""
    lines = ["config passthrough 'global'"]
    for k in sorted(cfg.values):
        v = cfg.values[k]
        if v is True or v is False:
            v = "1" if v else "0"
        elif k in ("mark_bit", "steer_mark_bit"):
            v = "0x%x" % v
        lines.append("\toption %s '%s'" % (k, str(v).replace("'", "'\\''")))
    return "\n".join(lines) + "\n"
