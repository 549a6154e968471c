"""Keys and labels on whole simulated clusters (MockClock, in-memory network)."""

import trio
import trio.testing

from swimnode.net.keyring import Keyring, generate_key
from swimnode.testing import open_sim_cluster


async def test_key_rotation_keeps_the_cluster_converged(mock_clock: trio.testing.MockClock) -> None:
    old, new = generate_key(), generate_key()
    async with open_sim_cluster(0, seed=31) as cluster:
        rings = {}
        for i in range(5):
            rings[f"n{i}"] = Keyring(old)
            await cluster.start(f"n{i}", keyring=rings[f"n{i}"])
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        # Serf's procedure, one node at a time with time in between: install the new
        # key everywhere, make it primary everywhere, then remove the old one.
        for step in ("install", "use", "remove"):
            for name, ring in rings.items():
                if step == "install":
                    ring.install(new)
                elif step == "use":
                    ring.use(new)
                else:
                    ring.remove(old)
                await trio.sleep(3)
                assert cluster.converged(), f"diverged after {step} on {name}"
        await trio.sleep(30)
        assert cluster.converged()
        assert cluster.events_of("suspected") == []
        assert cluster.events_of("failed") == []


async def test_labelled_clusters_do_not_merge(mock_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(3, seed=32, label="blue") as cluster:
        assert await cluster.wait_for(cluster.converged, timeout=20) is not None
        # A node of another cluster that lists a blue node as its seed.
        await cluster.start("red", label="red")
        await trio.sleep(30)
        assert set(cluster.view("n0")) == {"n0", "n1", "n2"}
        assert set(cluster.view("red")) == {"red"}
        assert cluster.events_of("suspected") == []
