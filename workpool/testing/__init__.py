"""workpool's testing kit: the real engine in your tests, fast. With pytest (the plugin loads
itself): the fixtures `workpool_redis` (a real embedded redis-server per session, emptied per
test) and `workpool_pool(pool)` (your pool pointed at it), then `pool.testing.run_until_idle()`,
`pool.testing.advance(seconds)` and `pool.testing.assert_enqueued(name, args=...)`. Without
pytest: `attach(pool, url)`."""

from workpool.core.kit import Enqueued, TestingKit
from workpool.testing.kit import Kit, running
from workpool.testing.plugin import attach

__all__ = ["Enqueued", "Kit", "TestingKit", "attach", "running"]
