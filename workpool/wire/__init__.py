"""The wire every actor shares: Redis keys, entry fields and encodings, result codes, counters,
limits, the state-machine table, and the Lua scripts with their typed calls."""
