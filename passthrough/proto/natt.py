"""UDP 4500 demultiplexing (RFC 3948 2.1-2.3).

  - a single 0xFF octet is a NAT-keepalive;
  - four zero octets (the non-ESP marker, where an ESP SPI can never be 0) prefix an IKE message;
  - anything else is ESP-in-UDP starting with its SPI.
"""
from passthrough.proto.esp import parse_esp
from passthrough.proto.ike import parse_ike

NON_ESP_MARKER = b"\x00\x00\x00\x00"


def parse_natt(buf, off, end, d, partial):
    n = end - off
    if n == 1 and buf[off] == 0xFF:
        d["proto"] = "natt-keepalive"
        return None
    if n >= 4 and buf[off:off + 4] == NON_ESP_MARKER:
        d["proto"] = "ike"
        d["ike_natt"] = True
        return parse_ike(buf, off + 4, end, d, partial)
    if n == 0:
        return "empty UDP 4500 payload"
    d["proto"] = "esp"
    return parse_esp(buf, off, end, d, True)
