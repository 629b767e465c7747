"""Network-namespace lab: LAN hosts, a router running passthrough, a WAN server."""
