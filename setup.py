from setuptools import setup, find_packages

setup(
    name="passthrough",
    version="0.1.0",
    description="VPN passthrough / NAT-T helper for OpenWrt-class routers (NFQUEUE control plane, nftables fast path)",
    packages=find_packages(include=["passthrough", "passthrough.*", "nat", "nat.*"]),
    python_requires=">=3.9",
    install_requires=["pyyaml"],
    extras_require={
        "daemon": ["netfilterqueue"],
        "test": ["pytest", "scapy", "hypothesis", "netfilterqueue"],
    },
    entry_points={"console_scripts": ["passthrough=passthrough.cli:main"]},
)
