"""UCI configuration files (/etc/config/NAME), read and written the OpenWrt way.

The syntax is libuci's:

    package NAME                      (optional)
    config TYPE ['NAME']              a section; without a name it is anonymous (@TYPE[N])
        option NAME 'VALUE'
        list NAME 'VALUE'             repeated: a list

Words are unquoted, '...' (no escapes inside), "..." (backslash escapes the next character) or
any concatenation of these (UCI writes a ' inside a value as '\\''). A backslash outside quotes
escapes the next character; a backslash at the end of a line continues the statement on the next
line. `#` outside quotes starts a comment, `;` ends a statement. The keywords may be shortened to
their first letter (p, c, o, l), as libuci allows. Section and option names are [A-Za-z0-9_].

Editing keeps the file as it was: an unmodified file is written back byte for byte, and a set,
add_list or delete changes only the lines of the statements it touches (indentation and a trailing
comment of a rewritten line are kept; comments and blank lines elsewhere are never touched).
Writes are atomic (temporary file in the same directory, then rename) and, like libuci, replay the
pending changes on top of the file as it is on disk at commit time, under an flock of the file.

`Uci` mirrors the `uci` command line (get/set/add/add_list/del_list/delete/commit/revert). When the
real `uci` program is on PATH (an OpenWrt router) writes go through it (`uci -c DIR -t SAVEDIR ...`,
with a private save directory so other users' pending changes are never committed by us); the
native writer is the fallback and what Debian/CI use. Note that the `uci` program, like LuCI,
drops comments when it commits a file; the native writer keeps them.

The parser and the Package editor are pure and run under MicroPython (only the CLI path needs
subprocess, only locking needs fcntl; both are optional imports).
"""
try:
    import os
except ImportError:  # pragma: no cover - very old MicroPython ports
    import uos as os

from passthrough.compat import which

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
KEYWORDS = {"package": "package", "p": "package", "config": "config", "c": "config",
            "option": "option", "o": "option", "list": "list", "l": "list"}


class UciError(ValueError):
    """A syntax or lookup error; `lineno` is the 1-based line for syntax errors, else None."""

    def __init__(self, msg, lineno=None):
        super().__init__(msg)
        self.lineno = lineno


def quote(value):
    """A value as UCI writes it: in single quotes, a ' inside as '\\''."""
    return "'" + str(value).replace("'", "'\\''") + "'"


def valid_name(s):
    """Section and option names: [A-Za-z0-9_]+ (libuci uci_validate_name)."""
    if not s:
        return False
    for ch in s:
        if ch not in NAME_CHARS:
            return False
    return True


def valid_type(s):
    """Section types: printable ASCII without blanks (libuci uci_validate_type)."""
    if not s:
        return False
    for ch in s:
        if ord(ch) < 33 or ord(ch) > 126:
            return False
    return True


def _fnv16(s):
    h = 0x811C9DC5
    for ch in s:
        h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
    return (h ^ (h >> 16)) & 0xFFFF


def anon_name(index, stype):
    """Name of the anonymous section number `index` (1-based among all sections): cfgIIHHHH like
    libuci's. Deterministic, so the same file gives the same names in every process."""
    return "cfg%02x%04x" % (index & 0xFF, _fnv16(stype))


# --- tokenizer ----------------------------------------------------------------------------------
class _Stmt:
    """One statement: its words and where it is (0-based lines, columns of its first and last char)."""

    def __init__(self, words, first, col0, last, col1):
        self.words = words
        self.first = first      # first line
        self.col0 = col0        # column of its first character on `first`
        self.last = last        # last line
        self.col1 = col1        # column just after its last word on `last`
        self.alone = True       # the only statement on its lines
        self.kind = None


def _scan(text):
    """Statements of a UCI text. Raises UciError with the line number on a lexical error."""
    stmts = []
    n = len(text)
    i = 0
    line = 0
    col_base = 0                # index in text where `line` starts
    words = []
    first = col0 = None
    end_line = end_col = 0

    def finish():
        if words:
            stmts.append(_Stmt(list(words), first, col0, end_line, end_col))
        del words[:]

    while i < n:
        c = text[i]
        if c == "\n":
            finish()
            first = None
            i += 1
            line += 1
            col_base = i
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c == ";":
            finish()
            first = None
            i += 1
            continue
        if first is None:
            first, col0 = line, i - col_base
        w = []
        while i < n:
            c = text[i]
            if c in " \t\r\f\v\n;#":
                break
            if c == "'":
                j = i + 1
                while j < n and text[j] != "'" and text[j] != "\n":
                    j += 1
                if j >= n or text[j] != "'":
                    raise UciError("line %d: unterminated quote" % (line + 1), line + 1)
                w.append(text[i + 1:j])
                i = j + 1
            elif c == '"':
                j = i + 1
                while True:
                    if j >= n or text[j] == "\n":
                        raise UciError("line %d: unterminated quote" % (line + 1), line + 1)
                    d = text[j]
                    if d == '"':
                        break
                    if d == "\\" and j + 1 < n:
                        if text[j + 1] == "\n":  # continuation inside "..."
                            j += 2
                            line += 1
                            col_base = j
                            continue
                        w.append(text[j + 1])
                        j += 2
                        continue
                    w.append(d)
                    j += 1
                i = j + 1
            elif c == "\\":
                if i + 1 < n and text[i + 1] == "\n":  # line continuation
                    i += 2
                    line += 1
                    col_base = i
                elif i + 1 < n and text[i + 1] == "\r" and i + 2 < n and text[i + 2] == "\n":
                    i += 3
                    line += 1
                    col_base = i
                elif i + 1 < n:
                    w.append(text[i + 1])
                    i += 2
                else:
                    i += 1
            else:
                w.append(c)
                i += 1
        words.append("".join(w))
        end_line, end_col = line, i - col_base
    finish()
    per_line = {}
    for st in stmts:
        for ln in range(st.first, st.last + 1):
            per_line[ln] = per_line.get(ln, 0) + 1
    for st in stmts:
        for ln in range(st.first, st.last + 1):
            if per_line[ln] > 1:
                st.alone = False
    return stmts


def line_words(line, lineno=1):
    """The words of one line (all its statements), as config.uci_tokens always returned them."""
    try:
        stmts = _scan(line.replace("\n", " "))
    except UciError:
        raise UciError("line %d: unterminated quote" % lineno, lineno)
    out = []
    for st in stmts:
        out.extend(st.words)
    return out


# --- model ----------------------------------------------------------------------------------------
class Section:
    """A section: type, name (generated cfgXXXXXX for anonymous ones) and ordered options."""

    def __init__(self, stype, name, anonymous, index):
        self.type = stype
        self.name = name
        self.anonymous = anonymous
        self.index = index          # 1-based among all sections of the package
        self.heads = []             # `config` statements (a named section may be declared twice)
        self.stmts = []             # option/list statements, in file order
        self.order = []             # option names in first-seen order
        self.values = {}            # name -> str (option) or list of str (list)

    def get(self, option, default=None):
        return self.values.get(option, default)

    def options(self):
        """Plain options as a dict (lists left out)."""
        out = {}
        for k in self.order:
            v = self.values[k]
            if not isinstance(v, list):
                out[k] = v
        return out

    def lists(self):
        out = {}
        for k in self.order:
            v = self.values[k]
            if isinstance(v, list):
                out[k] = list(v)
        return out

    def items(self):
        return [(k, self.values[k]) for k in self.order]

    def last_line(self):
        ln = -1
        for st in self.heads + self.stmts:
            if st.last > ln:
                ln = st.last
        return ln

    def _set(self, name, value):
        if name not in self.values:
            self.order.append(name)
        self.values[name] = value

    def _add_list(self, name, value):
        cur = self.values.get(name)
        if cur is None:
            self._set(name, [value])
        elif isinstance(cur, list):
            cur.append(value)
        else:
            self.values[name] = [cur, value]


class Package:
    """One parsed config file that can be edited in place and turned back into text."""

    def __init__(self, text="", name=None):
        self.name = name
        self.alias = {}             # names the uci program gave anonymous sections -> ours
        self._load(text)

    # parsing
    def _load(self, text):
        self.lines = text.split("\n")
        self.sections = []
        self._by_name = {}
        self.package = None
        cur = None
        for st in _scan(text):
            lineno = st.first + 1
            kw = KEYWORDS.get(st.words[0])
            st.kind = kw
            args = st.words[1:]
            if kw == "package":
                if len(args) != 1:
                    raise UciError("line %d: 'package' takes one name" % lineno, lineno)
                self.package = args[0]
                cur = None
            elif kw == "config":
                if len(args) not in (1, 2):
                    raise UciError("line %d: 'config' takes a type and an optional name" % lineno, lineno)
                stype = args[0]
                if not valid_type(stype):
                    raise UciError("line %d: invalid section type %r" % (lineno, stype), lineno)
                name = args[1] if len(args) == 2 else ""
                if name and not valid_name(name):
                    raise UciError("line %d: invalid section name %r (use letters, digits and _)"
                                   % (lineno, name), lineno)
                if name and name in self._by_name:
                    cur = self._by_name[name]      # libuci merges a repeated named section
                    cur.type = stype
                else:
                    idx = len(self.sections) + 1
                    cur = Section(stype, name or anon_name(idx, stype), not name, idx)
                    self.sections.append(cur)
                    self._by_name[cur.name] = cur
                cur.heads.append(st)
            elif kw in ("option", "list"):
                if cur is None:
                    raise UciError("line %d: '%s' outside a config section" % (lineno, kw), lineno)
                if len(args) != 2:
                    raise UciError("line %d: '%s' takes a name and one value" % (lineno, kw), lineno)
                if not valid_name(args[0]):
                    raise UciError("line %d: invalid option name %r (use letters, digits and _)"
                                   % (lineno, args[0]), lineno)
                cur.stmts.append(st)
                if kw == "option":
                    cur._set(args[0], args[1])
                else:
                    cur._add_list(args[0], args[1])
            else:
                raise UciError("line %d: unknown keyword %r" % (lineno, st.words[0]), lineno)

    def text(self):
        return "\n".join(self.lines)

    # lookup
    def section(self, ref):
        """A section by name or by @type[N] (N may be negative); None when there is none."""
        if ref.startswith("@"):
            b = ref.find("[")
            if b < 0 or not ref.endswith("]"):
                raise UciError("bad section reference %r (use @type[N])" % ref)
            stype = ref[1:b]
            try:
                n = int(ref[b + 1:-1])
            except ValueError:
                raise UciError("bad section index in %r" % ref)
            same = [s for s in self.sections if s.type == stype]
            if n < 0:
                n += len(same)
            if 0 <= n < len(same):
                return same[n]
            return None
        return self._by_name.get(self.alias.get(ref, ref))

    def _need(self, ref):
        s = self.section(ref)
        if s is None:
            raise UciError("no section %r" % ref)
        return s

    def get(self, ref, option=None, default=None):
        """Option value (str, or list of str for lists); without option: the section's type."""
        s = self.section(ref)
        if s is None:
            return default
        if option is None:
            return s.type
        return s.values.get(option, default)

    def find(self, stype=None):
        return [s for s in self.sections if stype is None or s.type == stype]

    # editing: every edit rewrites self.lines, then re-parses (files are small)
    def _relex(self):
        self._load(self.text())

    def _split_line_group(self, st):
        """Lines shared by several statements ("option a 1; option b 2") become one line per
        statement, so that one of them can be rewritten or removed alone."""
        stmts = _scan(self.text())
        first, last = st.first, st.last
        grown = True
        while grown:
            grown = False
            for o in stmts:
                if o.first <= last and o.last >= first and (o.first < first or o.last > last):
                    first, last = min(first, o.first), max(last, o.last)
                    grown = True
        group = [o for o in stmts if o.first >= first and o.last <= last]
        tail = self.lines[last][group[-1].col1:] if group else ""
        indent = _indent(self.lines[first])
        new = [indent + _render_words(o.words) for o in group]
        if tail.strip().startswith("#"):
            new[-1] += tail
        self.lines[first:last + 1] = new
        self._relex()

    def _isolate(self, ref):
        """The section `ref`, after giving each of its statements lines of their own."""
        s = self._need(ref)
        name = s.name
        while True:
            shared = [st for st in s.heads + s.stmts if not st.alone]
            if not shared:
                return s
            self._split_line_group(shared[0])
            s = self._by_name[name]

    def _stmt_line(self, st, words):
        """A statement's line rewritten with new words: indentation and a trailing comment kept."""
        tail = self.lines[st.last][st.col1:]
        keep = tail if tail.strip().startswith("#") else ("\r" if tail.endswith("\r") else "")
        return _indent(self.lines[st.first]) + _render_words(words) + keep

    def _remove(self, stmts):
        for st in sorted(stmts, key=lambda t: -t.first):
            del self.lines[st.first:st.last + 1]

    def _end_of(self, s):
        """(line index, indentation) for a new statement at the end of section s."""
        indent = "\t"
        for st in s.stmts:
            indent = _indent(self.lines[st.first]) or indent
        return s.last_line() + 1, indent

    def _replace(self, s, option, new_words):
        """Put statements `new_words` where the statements of `option` were (or at the end of
        the section) and drop the old ones."""
        mine = [st for st in s.stmts if st.words[1] == option]
        if len(mine) == 1 and len(new_words) == 1:
            st = mine[0]
            self.lines[st.first:st.last + 1] = [self._stmt_line(st, new_words[0])]
        else:
            if mine:
                at, indent = mine[0].first, _indent(self.lines[mine[0].first])
            else:
                at, indent = self._end_of(s)
            self._remove(mine)
            self.lines[at:at] = [indent + _render_words(w) for w in new_words]
        self._relex()

    def set(self, ref, option, value):
        """`uci set`: an option (str) or a whole list (list of str)."""
        if not valid_name(option):
            raise UciError("invalid option name %r" % option)
        s = self._isolate(ref)
        if isinstance(value, (list, tuple)):
            self._replace(s, option, [["list", option, str(v)] for v in value])
        else:
            self._replace(s, option, [["option", option, str(value)]])

    def add_list(self, ref, option, value):
        if not valid_name(option):
            raise UciError("invalid option name %r" % option)
        s = self._isolate(ref)
        mine = [st for st in s.stmts if st.words[1] == option]
        if mine and mine[-1].kind == "option":  # libuci turns the option into a list
            st = mine[-1]
            self.lines[st.first:st.last + 1] = [self._stmt_line(st, ["list", option, st.words[2]])]
        if mine:
            at, indent = mine[-1].last + 1, _indent(self.lines[mine[-1].first])
        else:
            at, indent = self._end_of(s)
        self.lines[at:at] = [indent + _render_words(["list", option, str(value)])]
        self._relex()

    def del_list(self, ref, option, value):
        s = self._isolate(ref)
        self._remove([st for st in s.stmts if st.words[1] == option and st.kind == "list" and st.words[2] == value])
        self._relex()

    def delete(self, ref, option=None):
        """`uci delete`: an option (all its statements) or a whole section."""
        s = self._isolate(ref)
        if option is not None:
            self._remove([st for st in s.stmts if st.words[1] == option])
        else:
            self._remove(s.heads + s.stmts)
            for k in list(self.alias):
                if self.alias[k] == s.name:
                    del self.alias[k]
        self._relex()

    def add(self, stype, name=None):
        """A new section at the end of the file (after one blank line); returns its name."""
        if not valid_type(stype):
            raise UciError("invalid section type %r" % stype)
        if name is not None:
            if not valid_name(name):
                raise UciError("invalid section name %r" % name)
            if self.section(name) is not None:
                raise UciError("section %r exists" % name)
        text = self.text()
        if text.strip():
            if not text.endswith("\n"):
                text += "\n"
            if not text.endswith("\n\n"):
                text += "\n"
        text += _render_config(["config", stype] + ([name] if name else [])) + "\n"
        self._load(text)
        return self.sections[-1].name

    def set_section(self, ref, stype):
        """`uci set config.NAME=TYPE`: create the named section, or change its type."""
        s = self.section(ref)
        if s is None:
            return self.add(stype, ref)
        if s.type != stype:
            if not valid_type(stype):
                raise UciError("invalid section type %r" % stype)
            s = self._isolate(ref)
            for st in sorted(s.heads, key=lambda t: -t.first):  # every declaration of it
                self.lines[st.first:st.last + 1] = [
                    self._stmt_line(st, ["config", stype] + ([] if s.anonymous else [s.name]))]
            self._relex()
        return s.name


def _indent(line):
    i = 0
    while i < len(line) and line[i] in " \t":
        i += 1
    return line[:i]


def _render_config(words):
    out = "config " + words[1]
    if len(words) > 2:
        out += " " + quote(words[2])
    return out


def _render_words(words):
    if not words:
        return ""
    if words[0] == "config":
        return _render_config(words)
    if words[0] == "package":
        return "package " + words[1]
    return "%s %s %s" % (words[0], words[1], quote(words[2]))


def parse(text, name=None):
    return Package(text, name)


def load(path):
    return Package(read_text(path), _basename(path))


def read_text(path):
    """A file's text, byte-exact: no newline translation (\r\n stays), undecodable bytes kept."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8", "surrogateescape")
    except (TypeError, LookupError):  # MicroPython: no error handlers
        return data.decode("utf-8")


def _encode(text):
    try:
        return text.encode("utf-8", "surrogateescape")
    except (TypeError, LookupError):
        return text.encode("utf-8")


def _basename(path):
    i = path.rfind("/")
    return path[i + 1:] if i >= 0 else path


def _dirname(path):
    i = path.rfind("/")
    return path[:i] if i > 0 else ("/" if i == 0 else ".")


def write_atomic(path, text):
    """Write via a temporary file in the same directory and rename (readers never see half a file).
    Keeps the old file's permission bits."""
    mode = None
    try:
        mode = os.stat(path)[0] & 0o7777
    except OSError:
        pass
    try:
        pid = os.getpid()
    except AttributeError:  # MicroPython
        pid = 0
    tmp = "%s/.%s.uci-%d" % (_dirname(path), _basename(path), pid)
    f = open(tmp, "wb")
    try:
        f.write(_encode(text))
        f.flush()
        if hasattr(os, "fsync"):
            os.fsync(f.fileno())
    finally:
        f.close()
    if mode is not None and hasattr(os, "chmod"):
        os.chmod(tmp, mode)
    try:
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# --- the uci command, natively or through the real program -------------------------------------
class Uci:
    """`uci`-like access to the configs in `confdir`.

    cli: None = use the `uci` program when it is on PATH, False = native only, or a path to it.
    Changes are kept pending (in memory, and in the program's private save directory when it is
    used) until commit(config); reads see pending changes, like `uci get` does.
    """

    def __init__(self, confdir="/etc/config", cli=None):
        self.confdir = confdir.rstrip("/") or "/"
        if cli is None:
            cli = which("uci")
            if cli is not None:
                try:
                    import subprocess  # noqa: F401
                except ImportError:
                    cli = None
        self.cli = cli or None
        self._savedir = None
        self._cache = {}
        self._pending = {}

    def path(self, config):
        if not valid_name(config.replace("-", "_")):
            raise UciError("invalid config name %r" % config)
        return self.confdir + "/" + config

    # reads
    def load(self, config):
        """The Package with pending changes applied."""
        pkg = self._cache.get(config)
        if pkg is None:
            pkg = self._read(config)
            self._cache[config] = pkg
        return pkg

    def _read(self, config):
        try:
            text = read_text(self.path(config))
        except OSError:
            text = ""
        return Package(text, config)

    def get(self, config, section, option=None, default=None):
        return self.load(config).get(section, option, default)

    def get_all(self, config, section):
        s = self.load(config).section(section)
        if s is None:
            return None
        out = {".type": s.type, ".name": s.name, ".anonymous": s.anonymous}
        for k, v in s.items():
            out[k] = list(v) if isinstance(v, list) else v
        return out

    def sections(self, config, stype=None):
        return [s.name for s in self.load(config).find(stype)]

    def changes(self, config):
        return list(self._pending.get(config, []))

    # writes
    def _do(self, config, op):
        _apply(self.load(config), op)
        self._pending.setdefault(config, []).append(op)

    def set(self, config, section, option, value=None):
        """set(c, s, o, v) is `uci set c.s.o=v` (v a str or a list); set(c, s, None, type) or
        set(c, s, type) with value None creates/retypes section s (`uci set c.s=type`)."""
        if option is None or value is None:
            stype = value if option is None else option
            s = self.load(config).section(section)
            if self.cli:
                self._cli(["set", "%s.%s=%s" % (config, section, stype)])
            self._do(config, ("set_section", s.name if s else section, stype))
            return
        s = self.load(config)._need(section)
        if self.cli:
            if isinstance(value, (list, tuple)):
                self._cli(["delete", "%s.%s.%s" % (config, section, option)], check=False)
                for v in value:
                    self._cli(["add_list", "%s.%s.%s=%s" % (config, section, option, v)])
            else:
                self._cli(["set", "%s.%s.%s=%s" % (config, section, option, value)])
        self._do(config, ("set", s.name, option, list(value) if isinstance(value, (list, tuple)) else str(value)))

    def add(self, config, stype):
        """`uci add config type`: a new anonymous section; returns its name."""
        pkg = self.load(config)
        if self.cli:
            name = self._cli(["add", config, stype]).strip()
        else:
            name = anon_name(len(pkg.sections) + 1, stype)
        self._do(config, ("add", stype, name))
        return name

    def add_list(self, config, section, option, value):
        s = self.load(config)._need(section)
        if self.cli:
            self._cli(["add_list", "%s.%s.%s=%s" % (config, section, option, value)])
        self._do(config, ("add_list", s.name, option, str(value)))

    def del_list(self, config, section, option, value):
        s = self.load(config)._need(section)
        if self.cli:
            self._cli(["del_list", "%s.%s.%s=%s" % (config, section, option, value)])
        self._do(config, ("del_list", s.name, option, str(value)))

    def delete(self, config, section, option=None):
        s = self.load(config)._need(section)
        if self.cli:
            self._cli(["delete", "%s.%s" % (config, section) + ("" if option is None else "." + option)])
        self._do(config, ("delete", s.name, option))

    def revert(self, config):
        if self.cli and self._pending.get(config):
            self._cli(["revert", config], check=False)
        self._pending.pop(config, None)
        self._cache.pop(config, None)

    def commit(self, config):
        """Write the pending changes of `config` to its file (atomically)."""
        ops = self._pending.get(config, [])
        if self.cli:
            self._cli(["commit", config])
        else:
            path = self.path(config)
            lock = _lock(path)
            try:
                pkg = self._read(config)  # the file as it is now: someone may have changed it
                for op in ops:
                    _apply(pkg, op)
                write_atomic(path, pkg.text())
            finally:
                _unlock(lock)
        self._pending.pop(config, None)
        self._cache.pop(config, None)

    # the uci program
    def _cli(self, args, check=True):
        import subprocess

        if self._savedir is None:
            import tempfile

            self._savedir = tempfile.mkdtemp(prefix="passthrough-uci-")
        cmd = [self.cli, "-c", self.confdir, "-t", self._savedir] + args
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        if check and p.returncode != 0:
            raise UciError("%s: %s" % (" ".join(cmd), (p.stderr or p.stdout).strip() or "exit %d" % p.returncode))
        return p.stdout


def _apply(pkg, op):
    verb = op[0]
    if verb == "set":
        pkg.set(op[1], op[2], op[3])
    elif verb == "set_section":
        pkg.set_section(op[1], op[2])
    elif verb == "add":
        ours = pkg.add(op[1])
        if ours != op[2]:  # the uci program named it: keep answering to that name
            pkg.alias[op[2]] = ours
    elif verb == "add_list":
        pkg.add_list(op[1], op[2], op[3])
    elif verb == "del_list":
        pkg.del_list(op[1], op[2], op[3])
    elif verb == "delete":
        pkg.delete(op[1], op[2])
    else:
        raise UciError("unknown change %r" % (verb,))


def _lock(path):
    try:
        import fcntl
    except ImportError:
        return None
    try:
        f = open(path, "a")
    except OSError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except OSError:
        pass
    return f


def _unlock(f):
    if f is not None:
        f.close()
