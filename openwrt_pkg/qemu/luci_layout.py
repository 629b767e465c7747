"""Install LuCI (luci-base, luci-theme-bootstrap, luci-mod-admin-full's modules) and the pieces of
OpenWrt's userspace LuCI runs on into an image root, at the paths OpenWrt's luci.mk and package
Makefiles use.

    install_luci(root, luci_tree, stage, openwrt_tree, apps=(), deps=True, minify=True,
                 rpcd_tree=None) -> report

`luci_tree` is the unpacked openwrt/luci tree (userspace.py's manifest["trees"]["luci"]),
`stage` the staged build (manifest["stage"]), `openwrt_tree` the unpacked openwrt/openwrt tree
(manifest["trees"]["openwrt"]). `apps` are more luci.mk-style package folders (htdocs/, root/,
ucode/), e.g. openwrt_pkg/luci-app-passthrough. The report is {"packages": {name: [image
paths]}, "notes": [what was skipped or replaced, and why]}.

What luci.mk's `Package/<name>/install` does, per LuCI package (transcribed, not copied):
ucode/ -> /usr/share/ucode/luci/ (then SubstituteVersion: `?v=<version>` on the .js/.css URLs
of {{ resource }} / {{ media }} in *.ut templates), htdocs/ -> /www (then JsMin with luci-base's
own jsmin, built here from its source with the host compiler, as luci-base/host does; CssTidy
needs csstidy/host, which is not available: CSS stays as it is), root/ -> /, src/ -> its
Makefile's `install` (luci-base: core.so and version.uc, already built into the stage by
userspace.py; luci-mod-status: luci-bwc, built here). Translations (po/ -> luci-i18n-* packages
of *.lmo catalogs) are not made: the UI is English.

deps=True also installs the OpenWrt packages in luci-base's LUCI_DEPENDS (rpcd, rpcd-mod-file,
rpcd-mod-ucode, ucode and its modules, liblucihttp-ucode, uhttpd with mod-ubus and mod-ucode,
and what they link against: libubox, libubus/ubusd/ubus, libuci/uci) as their package
Makefiles in `openwrt_tree` install them: rpcd, ubusd and uci under /sbin, libubox, libubus and
libuci under /lib. An image builder that already installs those packages passes deps=False
(installing them twice puts the same files at the same paths). rpcd's own unauthenticated.json
(session.login for anonymous requests) comes from rpcd's source tree (`rpcd_tree`).
Not available, so not installed: rpcd-mod-luci (the `luci-rpc` object: needs iwinfo headers),
rpcd-mod-iwinfo, cgi-io (not in the source mirror; only file up/download uses it). ucode-mod-html
is not in the mirror either: LuCI's dispatcher and the bootstrap templates need its striptags()
and entityencode(), so a small ucode module of the project's own (HTML_UC below) stands in at
/usr/share/ucode/html.uc, and only when the stage has no html.so.

The luci uci config: luci-base's /etc/config/luci, plus the uci-defaults scripts of the packages
(the theme's 30_luci-theme-bootstrap, uhttpd's 00_uhttpd_ubus) and one for luci-base's postinst
(LUCI_UHTTPD_DEFAULTS: the ucode handler for /cgi-bin/luci in /etc/config/uhttpd; the postinst
itself does nothing when a package goes into an image root), which run at first boot.
"""
import glob
import os
import re
import shutil
import subprocess
import tempfile

from openwrt_layout import MODES, LayoutError, copy_tree, put_file  # same folder: the file-placement pieces

# LuCI packages: (name, folder in the luci tree, what of its src/ is installed)
LUCI_PACKAGES = [
    ("luci-base", "modules/luci-base", "stage"),
    ("luci-theme-bootstrap", "themes/luci-theme-bootstrap", None),
    # luci-mod-admin-full is a meta package: luci-mod-status, -system, -network
    ("luci-mod-status", "modules/luci-mod-status", "luci-bwc"),
    ("luci-mod-system", "modules/luci-mod-system", None),
    ("luci-mod-network", "modules/luci-mod-network", None),
]

HTDOCS = "/www"
UCODE_LIBRARYDIR = "/usr/share/ucode/luci"

# OpenWrt packages LuCI needs (luci-base's LUCI_DEPENDS and what those link against), as their
# Makefiles' install sections put them: (package, Makefile, [(mode, source, destination)]).
# source "stage:..." is the staged build, "files:..." a file of the openwrt tree, "rpcd:..." of
# rpcd's source tree.
DEPS = [
    ("libubox", "package/libs/libubox/Makefile", [
        ("data", "stage:usr/lib/libubox.so*", "/lib/"),
        ("data", "stage:usr/lib/libblobmsg_json.so*", "/lib/"),
        ("data", "stage:usr/lib/libjson_script.so*", "/lib/")]),
    ("libubus", "package/system/ubus/Makefile", [("data", "stage:usr/lib/libubus.so*", "/lib/")]),
    ("ubusd", "package/system/ubus/Makefile", [("bin", "stage:usr/sbin/ubusd", "/sbin/")]),
    ("ubus", "package/system/ubus/Makefile", [("bin", "stage:usr/bin/ubus", "/bin/")]),
    ("libuci", "package/system/uci/Makefile", [("data", "stage:usr/lib/libuci.so*", "/lib/")]),
    ("uci", "package/system/uci/Makefile", [("bin", "stage:usr/bin/uci", "/sbin/")]),
    ("libucode", "package/utils/ucode/Makefile", [("data", "stage:usr/lib/libucode.so*", "/usr/lib/")]),
    ("ucode", "package/utils/ucode/Makefile", [("bin", "stage:usr/bin/ucode", "/usr/bin/")]),
    ("libudebug", "package/libs/udebug/Makefile", [("data", "stage:usr/lib/libudebug.so*", "/usr/lib/")]),
    # ucode-mod-fs, -uci, -ubus, -math (luci-base), -socket (luci-app-passthrough's plugin),
    # -uloop, -log, -struct, -io, ... (one package each in OpenWrt; all of the stage's here)
    ("ucode-mod-*", "package/utils/ucode/Makefile", [("data", "stage:usr/lib/ucode/*.so", "/usr/lib/ucode/")]),
    ("rpcd", "package/system/rpcd/Makefile", [
        ("bin", "files:package/system/rpcd/files/rpcd.init", "/etc/init.d/rpcd"),
        ("bin", "stage:usr/sbin/rpcd", "/sbin/rpcd"),
        ("conf", "files:package/system/rpcd/files/rpcd.config", "/etc/config/rpcd"),
        ("bin", "files:package/system/rpcd/files/50-migrate-rpcd-ubus-sock.sh", "/etc/uci-defaults/"),
        # $(PKG_BUILD_DIR)/unauthenticated.json: session.login for anonymous requests
        ("data", "rpcd:unauthenticated.json", "/usr/share/rpcd/acl.d/unauthenticated.json")]),
    ("rpcd-mod-file", "package/system/rpcd/Makefile", [("bin", "stage:usr/lib/rpcd/file.so", "/usr/lib/rpcd/")]),
    ("rpcd-mod-ucode", "package/system/rpcd/Makefile", [("bin", "stage:usr/lib/rpcd/ucode.so", "/usr/lib/rpcd/")]),
    ("uhttpd", "package/network/services/uhttpd/Makefile", [
        ("bin", "files:package/network/services/uhttpd/files/uhttpd.init", "/etc/init.d/uhttpd"),
        ("conf", "files:package/network/services/uhttpd/files/uhttpd.config", "/etc/config/uhttpd"),
        ("bin", "stage:usr/bin/uhttpd", "/usr/sbin/uhttpd")]),
    ("uhttpd-mod-ubus", "package/network/services/uhttpd/Makefile", [
        ("bin", "stage:usr/lib/uhttpd_ubus.so", "/usr/lib/"),
        ("data", "files:package/network/services/uhttpd/files/ubus.default", "/etc/uci-defaults/00_uhttpd_ubus")]),
    ("uhttpd-mod-ucode", "package/network/services/uhttpd/Makefile", [
        ("bin", "stage:usr/lib/uhttpd_ucode.so", "/usr/lib/")]),
    ("liblucihttp", "packages feed libs/lucihttp", [("data", "stage:usr/lib/liblucihttp.so*", "/usr/lib/")]),
    ("liblucihttp-ucode", "packages feed libs/lucihttp", [
        ("data", "stage:usr/lib/ucode/lucihttp.so", "/usr/lib/ucode/")]),
]

# luci-base's postinst, for an image root: the same uci change, run at first boot.
LUCI_UHTTPD_DEFAULTS = """#!/bin/sh
# luci-base's postinst (LuCI's ucode handler for /cgi-bin/luci), which skips image roots
case "$(uci -q get uhttpd.main.ucode_prefix)" in
*/cgi-bin/luci*) ;;
*)
	uci add_list uhttpd.main.ucode_prefix='/cgi-bin/luci=/usr/share/ucode/luci/uhttpd.uc'
	uci commit uhttpd
	;;
esac
exit 0
"""

# The two functions of ucode-mod-html that LuCI uses (dispatcher.uc, bootstrap templates), in
# ucode. Written for this project; not the upstream module (which is C and not in the mirror).
HTML_UC = r"""// Stand-in for ucode-mod-html (not in the source mirror): striptags() and entityencode().
'use strict';

export function striptags(s) {
	if (s == null)
		return null;

	s = replace(`${s}`, /<!--.*?-->/gs, '');
	s = replace(s, /<[^>]*>/g, '');

	return replace(s, /\s+/g, ' ');
};

export function entityencode(s, quotes) {
	if (s == null)
		return null;

	s = replace(`${s}`, /&/g, '&#38;');
	s = replace(s, /</g, '&#60;');
	s = replace(s, />/g, '&#62;');

	if (quotes) {
		s = replace(s, /"/g, '&#34;');
		s = replace(s, /'/g, '&#39;');
	}

	return s;
};
"""


def _write(root, dest, text, mode=0o644):
    path = root + dest
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return dest


def _host_tool(src, name, workdir, libs=()):
    """Build one of LuCI's small C helpers (jsmin, luci-bwc) with the host compiler."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc or not os.path.exists(src):
        return None
    out = os.path.join(workdir, name)
    r = subprocess.run([cc, "-O2", "-o", out, src] + list(libs), capture_output=True, text=True)
    return out if r.returncode == 0 else None


def substitute_version(folder, version):
    """luci.mk's SubstituteVersion for ucode templates (*.ut): PKG_VERSION markers and a
    `?v=<version>` cache buster on {{ resource }} / {{ media }} .js/.css URLs."""
    for path in glob.glob(os.path.join(folder, "**", "*.ut"), recursive=True):
        with open(path) as f:
            text = f.read()
        new = re.sub(r"\{# *([^ ]*)PKG_VERSION *#\}", lambda m: m.group(1) + version, text)
        new = re.sub(r'"(\{\{ *(?:media|resource) *\}\}[^"]*\.(?:js|css))"', lambda m: '"%s?v=%s"' % (m.group(1), version), new)
        if new != text:
            with open(path, "w") as f:
                f.write(new)


def js_min(jsmin, folder):
    """luci.mk's JsMin: every .js below folder through jsmin (a file it fails on stays)."""
    for path in glob.glob(os.path.join(folder, "**", "*.js"), recursive=True):
        with open(path, "rb") as f:
            r = subprocess.run([jsmin], stdin=f, capture_output=True)
        if r.returncode == 0 and r.stdout:
            with open(path, "wb") as f:
                f.write(r.stdout)


def install_luci_package(root, pkgdir, name=None, version="1", jsmin=None):
    """One luci.mk package folder: ucode/, htdocs/, root/ (src/ is the caller's)."""
    name = name or os.path.basename(os.path.normpath(pkgdir))
    if not os.path.isdir(pkgdir):
        raise LayoutError("luci_layout: %s: no folder %s" % (name, pkgdir))
    placed = []
    ucode = os.path.join(pkgdir, "ucode")
    if os.path.isdir(ucode):
        with tempfile.TemporaryDirectory() as tmp:
            staged = os.path.join(tmp, "ucode")
            shutil.copytree(ucode, staged, symlinks=True)
            substitute_version(staged, version)
            placed += copy_tree(root, staged, UCODE_LIBRARYDIR)
    htdocs = os.path.join(pkgdir, "htdocs")
    if os.path.isdir(htdocs):
        with tempfile.TemporaryDirectory() as tmp:
            staged = os.path.join(tmp, "htdocs")
            shutil.copytree(htdocs, staged, symlinks=True)
            if jsmin:
                js_min(jsmin, staged)
            placed += copy_tree(root, staged, HTDOCS)
    files = os.path.join(pkgdir, "root")
    if os.path.isdir(files):
        placed += copy_tree(root, files, "/")
    return placed


def install_deps(root, stage, openwrt_tree, rpcd_tree):
    placed = {}
    bases = {"stage": stage, "files": openwrt_tree, "rpcd": rpcd_tree}
    for name, makefile, steps in DEPS:
        placed[name] = []
        for mode, src, dest in steps:
            where, rel = src.split(":", 1)
            path = os.path.join(bases[where], rel)
            hits = sorted(glob.glob(path))
            if not hits:
                raise LayoutError("luci_layout: %s: %s is missing (install rule of %s)" % (name, path, makefile))
            for h in hits:
                placed[name].append(put_file(root, h, dest, MODES[mode]))
    return placed


def luci_version(stage):
    """The version luci-base's src/Makefile baked into version.uc (userspace.py: git-<commit>)."""
    try:
        with open(os.path.join(stage, "usr", "share", "ucode", "luci", "version.uc")) as f:
            m = re.search(r"revision = '([^']*)'", f.read())
        return m.group(1) if m else "1"
    except OSError:
        return "1"


def install_luci(root, luci_tree, stage, openwrt_tree, apps=(), deps=True, minify=True, rpcd_tree=None):
    """LuCI and what it runs on into the image root `root` (see the module docstring).
    rpcd_tree: rpcd's unpacked source (manifest["trees"]["rpcd"]; default: beside luci_tree,
    where userspace.py unpacks it), for its unauthenticated.json ACL."""
    for what, path in (("luci tree", luci_tree), ("stage", stage), ("openwrt tree", openwrt_tree)):
        if not path or not os.path.isdir(path):
            raise LayoutError("luci_layout: the %s %r is not a folder (userspace.py's manifest)" % (what, path))
    core = os.path.join(stage, "usr", "lib", "ucode", "luci", "core.so")
    if not os.path.exists(core):
        raise LayoutError("luci_layout: %s is missing: userspace.py builds luci-base's C module" % core)
    version = luci_version(stage)
    report = {"packages": {}, "notes": [
        "translations (po -> luci-i18n-*) not built: English only",
        "CssTidy not run (no csstidy/host): CSS as in the tree",
        "not installed (not buildable from the mirror): rpcd-mod-luci (luci-rpc), rpcd-mod-iwinfo, cgi-io",
    ]}
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        jsmin = None
        if minify:
            jsmin = _host_tool(os.path.join(luci_tree, "modules", "luci-base", "src", "jsmin.c"), "jsmin", work)
            if not jsmin:
                report["notes"].append("JsMin skipped: luci-base's jsmin did not build with the host compiler")
        else:
            report["notes"].append("JsMin skipped (minify=False)")
        for name, rel, src in LUCI_PACKAGES:
            placed = install_luci_package(root, os.path.join(luci_tree, rel), name, version, jsmin)
            if src == "stage":  # luci-base/src: `make install` went into the stage
                placed.append(put_file(root, core, "/usr/lib/ucode/luci/", 0o755))
                placed.append(put_file(root, os.path.join(stage, "usr", "share", "ucode", "luci", "version.uc"),
                                   UCODE_LIBRARYDIR + "/", 0o644))
            elif src == "luci-bwc":
                bwc = _host_tool(os.path.join(luci_tree, rel, "src", "luci-bwc.c"), "luci-bwc", work, ["-ldl"])
                if bwc:
                    placed.append(put_file(root, bwc, "/usr/bin/luci-bwc", 0o755))
                else:
                    report["notes"].append("luci-bwc (luci-mod-status's bandwidth collector) did not build (it needs iwinfo.h): skipped")
            report["packages"][name] = placed
        for app in apps:
            name = os.path.basename(os.path.normpath(app))
            report["packages"][name] = install_luci_package(root, app, name, version, jsmin)
    if deps:
        rpcd_tree = rpcd_tree or os.path.join(os.path.dirname(os.path.normpath(luci_tree)), "rpcd")
        report["packages"].update(install_deps(root, stage, openwrt_tree, rpcd_tree))
    report["packages"]["luci-base"].append(
        _write(root, "/etc/uci-defaults/30_luci-base-uhttpd-ucode", LUCI_UHTTPD_DEFAULTS, 0o755))
    if not glob.glob(os.path.join(stage, "usr", "lib", "ucode", "html.so")):
        report["packages"]["ucode-mod-html"] = [_write(root, "/usr/share/ucode/html.uc", HTML_UC)]
        report["notes"].append("ucode-mod-html (not in the mirror) replaced by /usr/share/ucode/html.uc "
                               "(striptags, entityencode)")
    for d in ("/tmp", "/var/run", "/etc/luci-uploads"):
        if not os.path.lexists(root + d):
            os.makedirs(root + d, exist_ok=True)
    return report


def main(argv=None):
    import argparse
    import json
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import userspace

    ap = argparse.ArgumentParser(description="install LuCI into an image root (for a look at the layout)")
    ap.add_argument("root")
    ap.add_argument("--app", action="append", default=[])
    ap.add_argument("--no-deps", action="store_true")
    a = ap.parse_args(argv)
    m = userspace.Userspace().build()
    rep = install_luci(a.root, m["trees"]["luci"], m["stage"], m["trees"]["openwrt"], a.app, not a.no_deps,
                       rpcd_tree=m["trees"].get("rpcd"))
    print(json.dumps({"files": sum(len(v) for v in rep["packages"].values()), "notes": rep["notes"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
