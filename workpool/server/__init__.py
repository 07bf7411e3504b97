"""Redis itself: the connection factory, backoff, and the embedded per-user redis-server."""
