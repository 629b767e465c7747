"""passthrough: VPN passthrough / NAT-T module for OpenWrt-class routers."""
__version__ = "0.1.0"
