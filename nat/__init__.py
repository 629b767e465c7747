"""NAT-T-aware port mapping: per-LAN-host conntrack zones, SPI / tunnel-id demux, kernel programming."""
