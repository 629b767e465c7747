"""Pure protocol parsers for the VPN control traffic the router has to understand.

One module per protocol, each a handful of functions over (buffer, offset, end, result dict):
ip (IPv4/IPv6/UDP/TCP), ike (IKEv1/IKEv2), natt (UDP 4500 demux), esp, l2tp (v2 and v3).
decode.decode_ip() ties them together and is the only entry point the daemon needs.

Everything here runs under CPython and MicroPython alike (see passthrough/compat.py), uses no
exceptions for control flow, and reports malformed input as an error string, never by raising.
"""
