"""Transports: the interface a driver sends and receives through, real UDP and TCP,
the security layer that wraps either, keyrings, and seed sources."""
