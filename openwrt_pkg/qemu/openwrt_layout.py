"""Install OpenWrt's userspace into an image root the way OpenWrt's package Makefiles install it.

    install_openwrt(root, manifest) -> {package: [paths in the image]}

`manifest` is userspace.py's (the staged build plus the unpacked openwrt/openwrt, firewall4 and
other trees). Each entry of PACKAGES below transcribes one `define Package/<name>/install` of
the mirror's package Makefiles (the Makefile path is given), with $(PKG_INSTALL_DIR)/usr the
stage and ./files that package's files/ folder in the openwrt tree, so the image has OpenWrt's
paths: procd, ubusd, rpcd, uci, logd under /sbin, libubox/libubus/libuci under /lib, ucode
under /usr, init scripts and /etc/config defaults from the packages. ALTERNATIVES become the
symlinks opkg/apk would make. base-files is installed as its Makefile does (files/, %PATH% and
version substitutions, directories and links, /lib/preinit/00_preinit.conf from the image
config). Nothing here is upstream code: it is the list of where upstream's files go.
"""
import glob
import os
import shutil

TARGET_INIT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # OpenWrt's default (rules.mk)

# (package, Makefile in the openwrt tree, [(op, source, dest)]).
# op: "bin"/"data"/"conf" copy one file or a glob (mode 0755/0644/0600), "tree" copies a folder's
# contents, "link" makes a symlink (source = target), "dir" makes a folder.
# source: "stage:usr/..." (the build), "files:..." (the package's files/ in the openwrt tree),
# "<tree>:..." (an unpacked source tree, e.g. "firewall4:root").
PACKAGES = [
    ("libubox", "package/libs/libubox/Makefile", [
        ("data", "stage:usr/lib/libubox.so*", "/lib/"),
        ("data", "stage:usr/lib/libblobmsg_json.so*", "/lib/"),
        ("data", "stage:usr/lib/libjson_script.so*", "/lib/"),
    ]),
    ("jshn", "package/libs/libubox/Makefile", [
        ("bin", "stage:usr/bin/jshn", "/usr/bin/"),
        ("data", "stage:usr/share/libubox/jshn.sh", "/usr/share/libubox/"),
    ]),
    ("libubus", "package/system/ubus/Makefile", [("data", "stage:usr/lib/libubus.so*", "/lib/")]),
    ("ubus", "package/system/ubus/Makefile", [("bin", "stage:usr/bin/ubus", "/bin/")]),
    ("ubusd", "package/system/ubus/Makefile", [("bin", "stage:usr/sbin/ubusd", "/sbin/")]),
    ("libuci", "package/system/uci/Makefile", [("data", "stage:usr/lib/libuci.so*", "/lib/")]),
    ("uci", "package/system/uci/Makefile", [
        ("dir", None, "/etc/uci-defaults"),
        ("bin", "stage:usr/bin/uci", "/sbin/"),
        ("tree", "files:package/system/uci/files", "/"),
    ]),
    ("libucode", "package/utils/ucode/Makefile", [("data", "stage:usr/lib/libucode.so*", "/usr/lib/")]),
    ("ucode", "package/utils/ucode/Makefile", [
        ("bin", "stage:usr/bin/ucode", "/usr/bin/"), ("bin", "stage:usr/bin/ucc", "/usr/bin/"),
        ("bin", "stage:usr/bin/utpl", "/usr/bin/"),
    ]),
    # ucode-mod-* (one package per module in OpenWrt): fs, math, ubus, uci, uloop, log, struct,
    # socket, resolv, io, debug
    ("ucode-mod-*", "package/utils/ucode/Makefile", [("data", "stage:usr/lib/ucode/*.so", "/usr/lib/ucode/")]),
    ("libudebug", "package/libs/udebug/Makefile", [("data", "stage:usr/lib/libudebug.so*", "/usr/lib/")]),
    ("udebugd", "package/libs/udebug/Makefile", [
        ("bin", "files:package/libs/udebug/files/udebug.config", "/etc/config/udebug"),
        ("bin", "files:package/libs/udebug/files/udebug.init", "/etc/init.d/udebug"),
        ("bin", "stage:usr/sbin/udebugd", "/usr/sbin/"),
    ]),
    ("udebug-cli", "package/libs/udebug/Makefile", [("bin", "stage:usr/sbin/udebug", "/usr/sbin/udebug")]),
    ("jsonfilter", "package/utils/jsonfilter/Makefile", [("bin", "stage:usr/bin/jsonpath", "/usr/bin/jsonfilter")]),
    ("procd", "package/system/procd/Makefile", [
        ("bin", "stage:usr/sbin/init", "/sbin/"), ("bin", "stage:usr/sbin/procd", "/sbin/"),
        ("bin", "stage:usr/sbin/askfirst", "/sbin/"), ("bin", "stage:usr/sbin/udevtrigger", "/sbin/"),
        ("bin", "stage:usr/sbin/upgraded", "/sbin/"),
        ("data", "stage:usr/lib/libsetlbf.so", "/lib/"),
        ("bin", "files:package/system/procd/files/reload_config", "/sbin/"),
        ("conf", "files:package/system/procd/files/hotplug*.json", "/etc/"),
        ("data", "files:package/system/procd/files/procd.sh", "/lib/functions/"),
        ("bin", "files:package/system/procd/files/service", "/sbin/service"),
    ]),
    ("ubox", "package/system/ubox/Makefile", [
        ("bin", "stage:usr/sbin/kmodloader", "/sbin/"), ("bin", "stage:usr/sbin/validate_data", "/sbin/"),
        ("data", "stage:usr/lib/libvalidate.so", "/lib/"),
        ("data", "files:package/system/ubox/files/modules.conf", "/etc/modules.conf"),
        # ALTERNATIVES 100:/sbin/{rmmod,insmod,lsmod,modinfo,modprobe}:/sbin/kmodloader
        ("link", "/sbin/kmodloader", "/sbin/rmmod"), ("link", "/sbin/kmodloader", "/sbin/insmod"),
        ("link", "/sbin/kmodloader", "/sbin/lsmod"), ("link", "/sbin/kmodloader", "/sbin/modinfo"),
        ("link", "/sbin/kmodloader", "/sbin/modprobe"),
    ]),
    ("getrandom", "package/system/ubox/Makefile", [("bin", "stage:usr/bin/getrandom", "/usr/bin/")]),
    ("logd", "package/system/ubox/Makefile", [
        ("bin", "stage:usr/sbin/logd", "/sbin/"),
        ("bin", "stage:usr/sbin/logread", "/usr/libexec/logread-ubox"),
        ("bin", "files:package/system/ubox/files/log.init", "/etc/init.d/log"),
        ("data", "files:package/system/ubox/files/logd.json", "/usr/share/acl.d/"),
        ("link", "/usr/libexec/logread-ubox", "/sbin/logread"),  # ALTERNATIVES 200:/sbin/logread
    ]),
    ("rpcd", "package/system/rpcd/Makefile", [
        ("bin", "files:package/system/rpcd/files/rpcd.init", "/etc/init.d/rpcd"),
        ("bin", "stage:usr/sbin/rpcd", "/sbin/rpcd"),
        ("data", "rpcd:unauthenticated.json", "/usr/share/rpcd/acl.d/unauthenticated.json"),
        ("conf", "files:package/system/rpcd/files/rpcd.config", "/etc/config/rpcd"),
        ("bin", "files:package/system/rpcd/files/50-migrate-rpcd-ubus-sock.sh", "/etc/uci-defaults/"),
    ]),
    # rpcd-mod-file, -rpcsys, -ucode (BuildPlugin: $(1)/usr/lib/rpcd/<name>.so)
    ("rpcd-mod-*", "package/system/rpcd/Makefile", [("bin", "stage:usr/lib/rpcd/*.so", "/usr/lib/rpcd/")]),
    ("uhttpd", "package/network/services/uhttpd/Makefile", [
        ("bin", "files:package/network/services/uhttpd/files/uhttpd.init", "/etc/init.d/uhttpd"),
        ("conf", "files:package/network/services/uhttpd/files/uhttpd.config", "/etc/config/uhttpd"),
        ("bin", "stage:usr/bin/uhttpd", "/usr/sbin/uhttpd"),
    ]),
    ("uhttpd-mod-ubus", "package/network/services/uhttpd/Makefile", [
        ("bin", "stage:usr/lib/uhttpd_ubus.so", "/usr/lib/"),
        ("data", "files:package/network/services/uhttpd/files/ubus.default", "/etc/uci-defaults/00_uhttpd_ubus"),
    ]),
    ("uhttpd-mod-ucode", "package/network/services/uhttpd/Makefile", [
        ("bin", "stage:usr/lib/uhttpd_ucode.so", "/usr/lib/"),
    ]),
    ("netifd", "package/network/config/netifd/Makefile", [
        ("bin", "stage:usr/sbin/netifd", "/sbin/"),
        ("tree", "files:package/network/config/netifd/files", "/"),
        ("dir", None, "/etc/udhcpc.user.d"),
        ("data", "netifd:scripts/utils.sh", "/lib/netifd/"),
        ("data", "netifd:scripts/netifd-proto.sh", "/lib/netifd/"),
    ]),
    ("firewall4", "package/network/config/firewall4/Makefile", [("tree", "firewall4:root", "/")]),
    ("opkg", "package/system/opkg/Makefile", [
        ("dir", None, "/usr/lib/opkg"),
        ("data", "files:package/system/opkg/files/customfeeds.conf", "/etc/opkg/customfeeds.conf"),
        ("data", "files:package/system/opkg/files/opkg.conf", "/etc/opkg.conf"),
        ("bin", "files:package/system/opkg/files/20_migrate-feeds", "/etc/uci-defaults/"),
        ("bin", "stage:usr/bin/opkg-cl", "/bin/opkg"),
        ("bin", "files:package/system/opkg/files/opkg-key", "/usr/sbin/"),
    ]),
    ("apk", "package/system/apk/Makefile", [
        ("dir", None, "/lib/apk/db"),
        ("bin", "stage:usr/bin/apk", "/usr/bin/apk"),
        ("data", "stage:usr/lib/libapk.so*", "/usr/lib/"),  # OpenWrt links apk statically: we keep the .so
        ("data", "files:package/system/apk/files/customfeeds.list", "/etc/apk/repositories.d/customfeeds.list"),
    ]),
    ("liblucihttp", "../luci lucihttp (OpenWrt packages feed libs/lucihttp)", [
        ("data", "stage:usr/lib/liblucihttp.so*", "/usr/lib/"),
    ]),
    ("liblucihttp-ucode", "../luci lucihttp (OpenWrt packages feed libs/lucihttp)", [
        ("data", "stage:usr/lib/ucode/lucihttp.so", "/usr/lib/ucode/"),
    ]),
]

MODES = {"bin": 0o755, "data": 0o644, "conf": 0o600}


class LayoutError(SystemExit):
    pass


def _source(spec, manifest):
    where, rel = spec.split(":", 1)
    if where == "stage":
        return os.path.join(manifest["stage"], rel)
    if where == "files":
        return os.path.join(manifest["trees"]["openwrt"], rel)
    tree = manifest["trees"].get(where) or os.path.join(manifest["src"], where)
    return os.path.join(tree, rel)


def put_file(root, src, dest, mode):
    """$(INSTALL_BIN) / $(INSTALL_DATA) / $(INSTALL_CONF) src into root; dest ending in / is a
    folder. Returns the image path."""
    path = root + dest
    if dest.endswith("/"):
        path = os.path.join(path, os.path.basename(src))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    if os.path.islink(src):
        os.symlink(os.readlink(src), path)
    else:
        shutil.copyfile(src, path)
        os.chmod(path, mode)
    return "/" + os.path.relpath(path, root)


def copy_tree(root, src, dest):
    """`$(CP) src/* root/dest/` (cp -a: modes and links kept); returns the image paths."""
    out = []
    for d, dirs, files in os.walk(src):
        rel = os.path.relpath(d, src)
        target = os.path.normpath(os.path.join(root + dest, rel))
        os.makedirs(target, exist_ok=True)
        for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            s = os.path.join(d, name)
            t = os.path.join(target, name)
            if os.path.lexists(t):
                os.unlink(t) if not os.path.isdir(t) or os.path.islink(t) else shutil.rmtree(t)
            if os.path.islink(s):
                os.symlink(os.readlink(s), t)
            else:
                shutil.copy2(s, t)  # keeps the tree's modes (cp -a / $(CP))
            out.append("/" + os.path.relpath(t, root))
    return out


def install_package(root, manifest, name, makefile, steps):
    placed = []
    for op, src, dest in steps:
        if op == "dir":
            os.makedirs(root + dest, exist_ok=True)
            continue
        if op == "link":
            p = root + dest
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if os.path.lexists(p):
                os.unlink(p)
            os.symlink(src, p)
            placed.append(dest)
            continue
        path = _source(src, manifest)
        if op == "tree":
            if not os.path.isdir(path):
                raise LayoutError("openwrt_layout: %s: no folder %s (%s)" % (name, path, makefile))
            placed += copy_tree(root, path, dest)
            continue
        hits = sorted(glob.glob(path))
        if not hits:
            raise LayoutError("openwrt_layout: %s: %s is missing (install rule of %s)" % (name, path, makefile))
        for h in hits:
            placed.append(put_file(root, h, dest, MODES[op]))
    return placed


def install_base_files(root, manifest, version):
    """package/base-files/Makefile's install: files/, substitutions, folders and links."""
    src = os.path.join(manifest["trees"]["openwrt"], "package", "base-files", "files")
    placed = copy_tree(root, src, "/")
    for rel in ("sbin/hotplug-call", "etc/preinit", "etc/profile"):
        _sub(os.path.join(root, rel), {"%PATH%": TARGET_INIT_PATH})
    for rel in ("etc/banner", "etc/device_info", "etc/openwrt_release", "etc/openwrt_version", "usr/lib/os-release"):
        _sub(os.path.join(root, rel), version)
    for d in ("CONTROL", "dev", "etc/config", "etc/crontabs", "etc/rc.d", "overlay", "lib/firmware", "mnt",
              "proc", "tmp", "usr/lib", "usr/bin", "sys", "www"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.makedirs(os.path.join(root, "root"), mode=0o750, exist_ok=True)
    shutil.rmtree(os.path.join(root, "CONTROL"))  # only the package build uses it
    links = {"etc/mtab": "/proc/mounts", "var": "tmp", "etc/resolv.conf": "/tmp/resolv.conf",
             "etc/TZ": "/tmp/TZ", "etc/localtime": "/tmp/localtime"}
    for link, target in links.items():
        p = os.path.join(root, link)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
        os.symlink(target, p)
    os.chmod(os.path.join(root, "etc", "shadow"), 0o600)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    return placed


def preinit_conf(root, **over):
    """ImageConfigOptions of base-files' Makefile: /lib/preinit/00_preinit.conf with the defaults
    of image-config.in, overridden by `over` (the image's config choices)."""
    conf = {
        "pi_suppress_stderr": '"y"', "fs_failsafe_wait_timeout": "4", "pi_init_path": '"%s"' % TARGET_INIT_PATH,
        "pi_init_env": '""', "pi_init_cmd": '"/sbin/init"', "pi_init_suppress_stderr": '"y"', "pi_ifname": '""',
        "pi_ip": '"192.168.1.1"', "pi_netmask": '"255.255.255.0"', "pi_broadcast": '"192.168.1.255"',
        "pi_preinit_net_messages": '""', "pi_preinit_no_failsafe_netmsg": '""', "pi_preinit_no_failsafe": '""',
    }
    conf.update(over)
    path = os.path.join(root, "lib", "preinit", "00_preinit.conf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for k, v in conf.items():
            f.write("%s=%s\n" % (k, v))


def _sub(path, table):
    if not os.path.exists(path):
        return
    with open(path) as f:
        text = f.read()
    for k, v in table.items():
        text = text.replace(k, v)
    with open(path, "w") as f:
        f.write(text)


def install_openwrt(root, manifest, version, only=None):
    """Install base-files and every package of PACKAGES (or those in `only`) into root."""
    placed = {"base-files": install_base_files(root, manifest, version)}
    for name, makefile, steps in PACKAGES:
        if only is None or name in only:
            placed[name] = install_package(root, manifest, name, makefile, steps)
    return placed
