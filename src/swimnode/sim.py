"""The in-memory network under its first documented path; it lives in
`swimnode.testing.network` (also exported by `swimnode.testing`)."""

from .testing.network import LinkParams, Network, NetworkStats, SimTransport

__all__ = ["LinkParams", "Network", "NetworkStats", "SimTransport"]
