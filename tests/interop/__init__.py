"""The interop matrix (python -m tests.interop): real VPN peers through the QEMU router."""
