"""ESP header (RFC 4303 2.1): SPI and sequence number; the rest is ciphertext."""
import struct

HEADER_LEN = 8


def parse_esp(buf, off, end, d, udp):
    """udp: True when carried in UDP 4500 (RFC 3948), False for IP protocol 50."""
    d["esp_udp"] = udp
    if off + HEADER_LEN > end:
        return "truncated ESP header"
    spi, seq = struct.unpack_from("!II", buf, off)
    d["esp_spi"] = "%08x" % spi
    d["esp_seq"] = seq
    if spi == 0:
        return "reserved ESP SPI 0"  # RFC 4303: SPI 0 is local-use only, never on the wire
    return None
