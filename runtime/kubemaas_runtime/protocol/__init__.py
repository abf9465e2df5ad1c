"""Transports for the dataplane (HTTP/REST only, for now)."""
