#!/usr/bin/env python3
"""OpenWrt package databases in an image root, written and used by OpenWrt's own package tools.

The router image provides many OpenWrt packages with Debian's or the mirror's builds standing in
for them (python3-light, libnetfilter-queue, kmod-*, luci-base, ...). Real opkg and apk only
resolve passthrough's dependencies against what their database says is installed, so the image
declares those packages there, as an OpenWrt image has them, and the tests install passthrough's
packages with the real tools: no --force-depends, no --nodeps.

    tools = find_tools()        # apk + opkg-cl (userspace.py's stage), scripts/ipkg-build
    declare_base_opkg(root, [(name, version, arch), ...], epoch=None)      # usr/lib/opkg/status + info/
    declare_base_apk(root, [(name, version, arch), ...], tools=None, arch="x86_64", epoch=None)
                                                                          # lib/apk/db via `apk add --initdb`
    opkg_install(root, ipks, tools=None, arch="x86_64") / opkg_remove(root, names, ...)  # --offline-root
    apk_add(root, apks, tools=None) / apk_del(root, names, tools=None)                   # apk --root
    write_opkg_conf(root, arch="x86_64") / write_apk_conf(root, arch="x86_64")  # read in the guest
    finish_opkg_status(root, epoch=None)   # prepare_rootfs's status touch-up (user flag, Installed-Time)
    run_opkg(root, args) / opkg_list_installed(root) / run_apk(root, args) / apk_info(root, args)

`tools` everywhere: a Tools object, the manifest Userspace.build() returns, a stage directory, or
None (find_tools: the cache's full stage if built, else just libubox + opkg-lede + apk-tools).
Errors are PkgDbError, with the tool's own message.

A package is (name, version, arch) or (name, version, arch, [provides, ...]); arch "all" is apk's
"noarch". Versions must suit the tool: apk wants its own grammar (1.2.3-r1, 0-r0; `apk version
--check` decides), opkg takes any word.

How OpenWrt does it, and what is kept here (include/rootfs.mk, include/image.mk, package-pack.mk
in the mirror's openwrt tree):
* opkg: `IPKG_NO_SCRIPT=1 IPKG_INSTROOT=$(1) TMPDIR=$(1)/tmp opkg --offline-root $(1)
  --force-postinstall --add-dest root:/ --add-arch all:100 --add-arch $(ARCH_PACKAGES):200`, then
  prepare_rootfs runs every postinst with IPKG_INSTROOT set. opkg_install runs the postinst from
  opkg directly with IPKG_INSTROOT set (no IPKG_NO_SCRIPT): the same script, once, offline.
* apk: `IPKG_INSTROOT=$(1) apk --root $(1) --no-logfile --preserve-env`, image packages added
  with `add --initdb --no-scripts --arch ... --repositories-file /dev/null --repository
  file://.../packages.adb NAMES`; declare_base_apk does that with an index (`apk mkndx`) of tiny
  packages (`apk mkpkg`, no files), one per declared name, so `apk info`, the world file and the
  installed database look as in a 25.12 image. apk_add runs the packages' scripts itself, with
  IPKG_INSTROOT set, --preserve-env (else apk passes only PATH and the scripts would act on
  the host) and --force-no-chroot (apk would chroot into an image root that has no shell yet).
Scripts therefore run on the build host; passthrough's check IPKG_INSTROOT and only touch files
below it. Every path written is checked to resolve inside ROOT (an absolute symlink such as
/var -> /tmp would otherwise lead opkg's lock file onto the host).
"""
import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import sources  # noqa: E402
import userspace  # noqa: E402

# What opkg-cl and apk need built (opkg-lede links libubox; apk-tools needs nothing of OpenWrt's).
TOOL_COMPONENTS = ["libubox", "opkg-lede", "apk-tools"]
DEFAULT_ARCH = "x86_64"
OPKG_DIR = "usr/lib/opkg"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")
ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
BASE_DESCRIPTION = "provided by the image (declared by passthrough's pkgdb.py, no files)"


class PkgDbError(Exception):
    pass


# --- the tools ------------------------------------------------------------------------------------
class Tools:
    """OpenWrt's package tools: apk and opkg-cl from a userspace.py stage (they need
    LD_LIBRARY_PATH=<stage>/usr/lib on the host) and scripts/ipkg-build of the openwrt tree."""

    def __init__(self, stage, openwrt_tree):
        self.stage = stage
        self.openwrt_tree = openwrt_tree
        self.apk = os.path.join(stage, "usr", "bin", "apk")
        self.opkg = os.path.join(stage, "usr", "bin", "opkg-cl")
        self.ipkg_build = os.path.join(openwrt_tree, "scripts", "ipkg-build")
        for what, path in (("apk", self.apk), ("opkg-cl", self.opkg), ("ipkg-build", self.ipkg_build)):
            if not os.path.isfile(path):
                raise PkgDbError("%s not found at %s (userspace.py stage %s, openwrt tree %s)"
                                 % (what, path, stage, openwrt_tree))

    def env(self, base=None, **extra):
        e = dict(os.environ if base is None else base)
        lib = os.path.join(self.stage, "usr", "lib")
        e["LD_LIBRARY_PATH"] = lib + (":" + e["LD_LIBRARY_PATH"] if e.get("LD_LIBRARY_PATH") else "")
        e.update(extra)
        return e

    def run(self, argv, env=None, timeout=300, cwd=None):
        try:
            return subprocess.run(argv, env=env or self.env(), cwd=cwd, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise PkgDbError("%s: %s" % (" ".join(argv[:3]), e))

    def __repr__(self):
        return "Tools(stage=%r, openwrt_tree=%r)" % (self.stage, self.openwrt_tree)


_TOOLS = {}


def _manifest_tools(m):
    try:
        return Tools(m["stage"], m["trees"]["openwrt"])
    except KeyError as e:
        raise PkgDbError("userspace manifest without %s" % e)


def find_tools(tools=None, cache=None):
    """Tools from: a Tools object (returned as is), a userspace manifest dict (what
    Userspace.build() returns), a stage directory (its manifest.json next to it names the
    trees), or None: the full userspace stage of `cache` if it is built already (the image
    builder's), else the three components the package tools need (TOOL_COMPONENTS), built and
    cached by userspace.py (~20 s the first time)."""
    if isinstance(tools, Tools):
        return tools
    if isinstance(tools, dict):
        return _manifest_tools(tools)
    if isinstance(tools, str):
        mpath = os.path.join(os.path.dirname(os.path.abspath(tools)), "manifest.json")
        try:
            import json
            with open(mpath) as f:
                m = json.load(f)
        except (OSError, ValueError) as e:
            raise PkgDbError("stage %s: no readable manifest.json next to it (%s)" % (tools, e))
        return Tools(os.path.abspath(tools), m["trees"]["openwrt"])
    if tools is not None:
        raise PkgDbError("tools: expected Tools, a userspace manifest or a stage path, got %r" % (tools,))
    cache = cache or userspace.DEFAULT_CACHE
    if cache in _TOOLS:
        return _TOOLS[cache]
    try:
        full = userspace.Userspace(cache)
        if os.path.exists(full.manifest_path):
            m = full.manifest()
        else:
            m = userspace.Userspace(cache, only=TOOL_COMPONENTS).build()
    except SystemExit as e:  # userspace.BuildError
        raise PkgDbError("building OpenWrt's package tools (userspace.py %s): %s" % (" ".join(TOOL_COMPONENTS), e))
    except OSError as e:
        raise PkgDbError("userspace cache %s: %s" % (cache, e))
    _TOOLS[cache] = _manifest_tools(m)
    return _TOOLS[cache]


_TREE_TMP = []


def ipkg_build_script(cache=None):
    """scripts/ipkg-build of the pinned openwrt tree, without building anything: from a built
    userspace stage's tree if there is one, else unpacked (sources.py: the mirror, or git) into
    a temporary directory removed at exit."""
    cache = cache or userspace.DEFAULT_CACHE
    for only in (None, TOOL_COMPONENTS):
        try:
            u = userspace.Userspace(cache, only=only)
            if os.path.exists(u.manifest_path):
                path = os.path.join(u.manifest()["trees"]["openwrt"], "scripts", "ipkg-build")
                if os.path.isfile(path):
                    return path
        except (OSError, ValueError, KeyError):
            pass
    if not _TREE_TMP:
        tmp = tempfile.mkdtemp(prefix="pt-openwrt-tree-")
        atexit.register(shutil.rmtree, tmp, True)
        try:
            _TREE_TMP.append(sources.unpack("openwrt", tmp))
        except sources.SourceError as e:
            raise PkgDbError("no openwrt tree for scripts/ipkg-build: %s" % e)
    path = os.path.join(_TREE_TMP[0], "scripts", "ipkg-build")
    if not os.path.isfile(path):
        raise PkgDbError("the openwrt tree %s has no scripts/ipkg-build" % _TREE_TMP[0])
    return path


# --- helpers --------------------------------------------------------------------------------------
def _root(root):
    root = os.path.abspath(str(root))
    if not os.path.isdir(root):
        raise PkgDbError("image root %s is not a directory" % root)
    if os.path.realpath(root) == "/":
        raise PkgDbError("image root is / : these helpers only write into an image being assembled")
    return root


def _inside(root, rel):
    """ROOT/rel, refusing a path that resolves outside ROOT (a symlink in the image pointing
    to an absolute host path)."""
    path = os.path.join(root, rel.lstrip("/"))
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root + os.sep):
        raise PkgDbError("%s resolves to %s, outside the image root %s (a symlink in the image?)"
                         % (path, real, root))
    return path


def _makedirs(root, rel):
    path = _inside(root, rel)
    os.makedirs(path, exist_ok=True)
    _inside(root, rel)  # re-check after creation
    return path


def _write(path, text, mode=0o644):
    tmp = path + ".tmp-pkgdb"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _need_root(what):
    if os.geteuid() != 0:
        raise PkgDbError("%s needs root: the image's files must belong to root (as OpenWrt's "
                         "image builder does it under fakeroot)" % what)


def _epoch(epoch):
    if epoch is not None:
        return int(epoch)
    env = os.environ.get("SOURCE_DATE_EPOCH")
    return int(env) if env else int(time.time())


def normalize(packages):
    """[(name, version, arch, [provides])] from (name, version, arch[, provides]) items, checked."""
    out, seen = [], set()
    if isinstance(packages, (str, bytes)) or packages is None:
        raise PkgDbError("packages: expected a list of (name, version, arch) tuples, got %r" % (packages,))
    for item in packages:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise PkgDbError("package %r: expected (name, version, arch) or (name, version, arch, provides)" % (item,))
        name, version, arch = (str(x) if x is not None else "" for x in item[:3])
        provides = list(item[3]) if len(item) == 4 and item[3] else []
        if not NAME_RE.match(name):
            raise PkgDbError("package name %r: OpenWrt names are [a-z0-9][a-z0-9._+-]*" % name)
        if not version or re.search(r"\s", version):
            raise PkgDbError("package %s: version %r must be one non-empty word" % (name, version))
        if not ARCH_RE.match(arch):
            raise PkgDbError("package %s: architecture %r (e.g. x86_64, all)" % (name, arch))
        for p in provides:
            if not NAME_RE.match(str(p).split("=", 1)[0]):
                raise PkgDbError("package %s: provides %r is not a package name" % (name, p))
        if name in seen:
            raise PkgDbError("package %s declared twice" % name)
        seen.add(name)
        out.append((name, version, arch, [str(p) for p in provides]))
    return out


def _stanzas(text):
    """opkg status/control text -> list of (package name, stanza text without trailing blank line)."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip("\n")):
        if not block.strip():
            continue
        m = re.search(r"^Package:\s*(\S+)", block, re.M)
        out.append((m.group(1) if m else None, block.rstrip("\n")))
    return out


# --- opkg -----------------------------------------------------------------------------------------
def declare_base_opkg(root, packages, epoch=None):
    """Declare `packages` installed in ROOT's opkg database: a stanza each in
    ROOT/usr/lib/opkg/status (Status: install ok installed, as an image has them after
    prepare_rootfs), ROOT/usr/lib/opkg/info/<name>.control and an empty <name>.list (the image
    owns the files). Existing stanzas of other packages stay; a package opkg installed with
    files (non-empty .list) is refused. Installed-Time: epoch (default SOURCE_DATE_EPOCH, else
    now). Returns the names declared."""
    root = _root(root)
    pkgs = normalize(packages)
    when = _epoch(epoch)
    info = _makedirs(root, OPKG_DIR + "/info")
    status_path = _inside(root, OPKG_DIR + "/status")
    existing = []
    if os.path.exists(status_path):
        with open(status_path) as f:
            existing = _stanzas(f.read())
    ours = {}
    for name, version, arch, provides in pkgs:
        lst = os.path.join(info, name + ".list")
        if os.path.exists(lst) and os.path.getsize(lst) > 0:
            raise PkgDbError("%s is installed from a package (%s lists its files): not declaring it" % (name, lst))
        prov = "Provides: %s\n" % ", ".join(provides) if provides else ""
        ours[name] = ("Package: %s\nVersion: %s\n%sStatus: install ok installed\nArchitecture: %s\n"
                      "Installed-Time: %d" % (name, version, prov, arch, when))
        _write(os.path.join(info, name + ".control"),
               "Package: %s\nVersion: %s\n%sSection: base\nArchitecture: %s\nInstalled-Size: 0\n"
               "Description: %s\n" % (name, version, prov, arch, BASE_DESCRIPTION))
        _write(lst, "")
    blocks = [(n, ours.pop(n) if n in ours else b) for n, b in existing]
    blocks += [(n, ours[n]) for n, *_ in pkgs if n in ours]
    _write(status_path, "".join(b + "\n\n" for _, b in blocks))
    return [p[0] for p in pkgs]


OFFLINE_OPKG_CONF = """# pkgdb.py: opkg --offline-root into an image, as OpenWrt's include/rootfs.mk calls it
# (--add-dest root:/ --add-arch all:100 --add-arch $(ARCH_PACKAGES):200; noarch as all)
dest root /
arch all 100
arch noarch 100
arch %s 200
"""


def run_opkg(root, args, tools=None, arch=DEFAULT_ARCH, conf=None):
    """The real opkg-cl on ROOT, offline as OpenWrt's image build runs it: `opkg-cl
    --offline-root ROOT -f CONF --force-postinstall ARGS` with IPKG_INSTROOT=ROOT and
    TMPDIR=ROOT/tmp; CONF: OFFLINE_OPKG_CONF for arch (or a given file, e.g. the image's
    /etc/opkg.conf). Returns opkg's output; PkgDbError (with it) on failure or "Collected
    errors" (opkg-lede exits 0 after some of them)."""
    _need_root("opkg")
    root = _root(root)
    if not ARCH_RE.match(arch or ""):
        raise PkgDbError("bad architecture %r" % arch)
    t = find_tools(tools)
    for rel in (OPKG_DIR + "/info", "tmp", "var/lock"):
        _makedirs(root, rel)
    with tempfile.TemporaryDirectory(prefix="pt-opkg-") as tmp:
        if conf is None:
            conf = os.path.join(tmp, "opkg.conf")
            _write(conf, OFFLINE_OPKG_CONF % arch)
        env = t.env(IPKG_INSTROOT=root, TMPDIR=os.path.join(root, "tmp"))
        env.pop("IPKG_NO_SCRIPT", None)
        env.pop("OFFLINE_ROOT", None)
        p = t.run([t.opkg, "--offline-root", root, "-f", conf, "--force-postinstall"] + list(args), env=env)
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or "Collected errors:" in out:
        raise PkgDbError("opkg %s failed (exit %d):\n%s" % (" ".join(os.path.basename(a) for a in args),
                                                            p.returncode, out))
    return out


def opkg_install(root, ipks, tools=None, arch=DEFAULT_ARCH, args=()):
    """`opkg install IPK...` offline into ROOT with the real opkg-cl, dependencies resolved from
    ROOT's status (declare_base_opkg), postinst run with IPKG_INSTROOT=ROOT. Returns opkg's
    output; PkgDbError (with opkg's message) on failure. Note opkg-lede's own way: given several
    files it may still install one whose dependencies are missing when another pulls it in as
    a dependency (the command fails all the same, exit 255)."""
    ipks = [os.path.abspath(str(p)) for p in ipks]
    if not ipks:
        raise PkgDbError("opkg_install: no packages given")
    for p in ipks:
        if not os.path.isfile(p):
            raise PkgDbError("no such package file: %s" % p)
    return run_opkg(root, list(args) + ["install"] + ipks, tools, arch)


def opkg_remove(root, names, tools=None, arch=DEFAULT_ARCH, args=()):
    """`opkg remove NAME...` offline (prerm/postrm run with IPKG_INSTROOT=ROOT)."""
    names = [str(n) for n in names]
    if not names:
        raise PkgDbError("opkg_remove: no packages given")
    return run_opkg(root, list(args) + ["remove"] + names, tools, arch)


def opkg_list_installed(root, tools=None):
    """{name: version} as the real opkg lists ROOT's installed packages."""
    out = run_opkg(root, ["list-installed"], tools)
    return dict(ln.split(" - ", 2)[:2] for ln in out.splitlines() if " - " in ln)


def finish_opkg_status(root, epoch=None):
    """What OpenWrt's prepare_rootfs does to the status after the image's opkg runs: the "user"
    flag leaves Status (install user installed -> install ok installed) and every
    Installed-Time becomes SOURCE_DATE_EPOCH (epoch, default $SOURCE_DATE_EPOCH; unchanged
    without either)."""
    root = _root(root)
    path = _inside(root, OPKG_DIR + "/status")
    with open(path) as f:
        text = f.read()

    def status(m):
        words = m.group(2).split(",")
        flags = [w for w in words if w != "user"] or ["ok"]
        return "%s%s%s" % (m.group(1), ",".join(flags), m.group(3))
    text = re.sub(r"^(Status: \S+ )(\S+)( \S+)$", status, text, flags=re.M)
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        epoch = os.environ["SOURCE_DATE_EPOCH"]
    if epoch is not None:
        text = re.sub(r"^Installed-Time: .*$", "Installed-Time: %d" % int(epoch), text, flags=re.M)
    _write(path, text)
    return path


def write_opkg_conf(root, arch=DEFAULT_ARCH, tools=None):
    """/etc/opkg.conf for opkg inside the guest: OpenWrt's file (the image's own copy if it has
    one, else package/system/opkg/files/opkg.conf of the openwrt tree) with the architecture
    lines opkg-lede defaults to (all 1, noarch 1, HOST_CPU 10) written out; and an empty
    /etc/opkg/distfeeds.conf (no feeds: the image is offline). Returns the opkg.conf path."""
    root = _root(root)
    if not ARCH_RE.match(arch or ""):
        raise PkgDbError("bad architecture %r" % arch)
    conf = _inside(root, "etc/opkg.conf")
    if os.path.isfile(conf):
        with open(conf) as f:
            base = f.read()
    else:
        src = os.path.join(find_tools(tools).openwrt_tree, "package", "system", "opkg", "files", "opkg.conf")
        with open(src) as f:
            base = f.read()
    lines = [ln for ln in base.splitlines() if not re.match(r"\s*arch\s", ln)]
    lines += ["arch all 1", "arch noarch 1", "arch %s 10" % arch]
    _makedirs(root, "etc/opkg")
    _write(conf, "\n".join(lines) + "\n")
    feeds = _inside(root, "etc/opkg/distfeeds.conf")
    if not os.path.exists(feeds):
        _write(feeds, "# no package feeds: the test image installs from files\n")
    return conf


# --- apk ------------------------------------------------------------------------------------------
APK_COMMON = ["--no-network", "--no-logfile", "--repositories-file", "/dev/null"]


def _apk_run(t, argv, env=None, what="apk"):
    p = t.run([t.apk] + argv, env=env or t.env())
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0:
        raise PkgDbError("%s failed (exit %d):\n%s" % (what, p.returncode, out))
    return out


def check_apk_versions(versions, tools=None):
    """PkgDbError naming every version apk's grammar refuses (`apk version --check` prints them)."""
    t = find_tools(tools)
    versions = sorted(set(versions))
    p = t.run([t.apk, "version", "--check"] + versions)
    bad = [v for v in p.stdout.split() if v in versions]
    if bad:
        raise PkgDbError("apk refuses the version(s) %s (apk versions look like 1.2.3-r1 or 0-r0)"
                         % ", ".join(repr(v) for v in bad))
    if p.returncode != 0:
        raise PkgDbError("apk version --check failed (exit %d): %s" % (p.returncode, (p.stdout + p.stderr).strip()))


def declare_base_apk(root, packages, tools=None, arch=DEFAULT_ARCH, epoch=None):
    """Declare `packages` installed in ROOT's apk database (ROOT/lib/apk/db, ROOT/etc/apk/world,
    /etc/apk/arch): one tiny package each (`apk mkpkg`, no files, arch "all" -> "noarch"),
    indexed (`apk mkndx`) and added by name with the real apk, `--initdb` the first time, no
    scripts, no network, no repositories kept. Returns the names declared."""
    _need_root("declare_base_apk")
    root = _root(root)
    pkgs = normalize(packages)
    if not ARCH_RE.match(arch or ""):
        raise PkgDbError("bad architecture %r" % arch)
    t = find_tools(tools)
    check_apk_versions([p[1] for p in pkgs], t)
    for rel in ("lib/apk/db", "etc/apk", "tmp"):
        _inside(root, rel)
    env = t.env(SOURCE_DATE_EPOCH=str(_epoch(epoch)))
    with tempfile.TemporaryDirectory(prefix="pt-apkbase-") as tmp:
        files = []
        for name, version, parch, provides in pkgs:
            out = os.path.join(tmp, "%s-%s.apk" % (name, version))
            argv = ["mkpkg", "--info", "name:" + name, "--info", "version:" + version,
                    "--info", "arch:" + ("noarch" if parch in ("all", "noarch") else parch),
                    "--info", "description:" + BASE_DESCRIPTION, "--info", "origin:image"]
            if provides:
                argv += ["--info", "provides:" + " ".join(provides)]
            _apk_run(t, argv + ["--output", out], env, "apk mkpkg %s" % name)
            files.append(out)
        index = os.path.join(tmp, "packages.adb")
        _apk_run(t, ["mkndx", "--allow-untrusted", "--output", index] + files, env, "apk mkndx")
        initdb = not os.path.exists(os.path.join(root, "lib", "apk", "db", "installed"))
        argv = ["--root", root] + (["--initdb", "--arch", arch] if initdb else []) + APK_COMMON + \
               ["--no-scripts", "--allow-untrusted", "--repository", "file://" + index, "add"] + [p[0] for p in pkgs]
        _apk_run(t, argv, env, "apk add (declaring the image's packages)")
    return [p[0] for p in pkgs]


def _apk_scripts_env(t, root):
    env = t.env(IPKG_INSTROOT=root)
    env.pop("IPKG_NO_SCRIPT", None)
    return env


def apk_add(root, apks, tools=None, args=()):
    """`apk add --allow-untrusted APK...` into ROOT with the real apk: dependencies from ROOT's
    database (declare_base_apk), no network, no repositories; the packages' scripts run with
    IPKG_INSTROOT=ROOT (--preserve-env --force-no-chroot, see the module doc). Returns apk's
    output; PkgDbError (with apk's message) on failure."""
    _need_root("apk_add")
    root = _root(root)
    apks = [os.path.abspath(str(p)) for p in apks]
    if not apks:
        raise PkgDbError("apk_add: no packages given")
    for p in apks:
        if not os.path.isfile(p):
            raise PkgDbError("no such package file: %s" % p)
    if not os.path.exists(_inside(root, "lib/apk/db/installed")):
        raise PkgDbError("%s has no apk database (lib/apk/db/installed): declare_base_apk first" % root)
    t = find_tools(tools)
    argv = ["--root", root] + APK_COMMON + ["--allow-untrusted", "--preserve-env", "--force-no-chroot"] + \
        list(args) + ["add"] + apks
    return _apk_run(t, argv, _apk_scripts_env(t, root), "apk add")


def apk_del(root, names, tools=None, args=()):
    """`apk del NAME...` in ROOT (pre-/post-deinstall run with IPKG_INSTROOT=ROOT)."""
    _need_root("apk_del")
    root = _root(root)
    names = [str(n) for n in names]
    if not names:
        raise PkgDbError("apk_del: no packages given")
    t = find_tools(tools)
    argv = ["--root", root] + APK_COMMON + ["--preserve-env", "--force-no-chroot"] + list(args) + ["del"] + names
    return _apk_run(t, argv, _apk_scripts_env(t, root), "apk del")


def run_apk(root, args, tools=None):
    """The real apk on ROOT's database: `apk --root ROOT --no-network --no-logfile
    --repositories-file /dev/null ARGS` (read-only uses: info, list, audit, ...)."""
    root = _root(root)
    t = find_tools(tools)
    return _apk_run(t, ["--root", root] + APK_COMMON + list(args), None, "apk " + " ".join(list(args)[:1]))


def apk_info(root, args=(), tools=None):
    """`apk info ARGS` on ROOT's database (read only)."""
    return run_apk(root, ["info"] + list(args), tools)


def write_apk_conf(root, arch=DEFAULT_ARCH):
    """What apk reads inside the guest: /etc/apk/arch (the image's architecture),
    /etc/apk/repositories.d/distfeeds.list without feeds (the image is offline; apk's own
    customfeeds.list stays as the image has it), /etc/apk/keys/. Returns /etc/apk."""
    root = _root(root)
    if not ARCH_RE.match(arch or ""):
        raise PkgDbError("bad architecture %r" % arch)
    etc = _makedirs(root, "etc/apk")
    _makedirs(root, "etc/apk/repositories.d")
    _makedirs(root, "etc/apk/keys")
    _write(os.path.join(etc, "arch"), arch + "\n")
    _write(_inside(root, "etc/apk/repositories.d/distfeeds.list"),
           "# no package feeds: the test image installs from files\n")
    return etc


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description="print where OpenWrt's package tools are (building them if needed)")
    ap.add_argument("--cache", default=None)
    a = ap.parse_args(argv)
    try:
        t = find_tools(cache=a.cache)
    except PkgDbError as e:
        print("pkgdb: %s" % e, file=sys.stderr)
        return 1
    print("apk %s\nopkg %s\nipkg-build %s\nLD_LIBRARY_PATH=%s" % (t.apk, t.opkg, t.ipkg_build,
                                                                 os.path.join(t.stage, "usr", "lib")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
