"""Durable workflows: a workflow function replayed against its journal on the workers, each
step a job of the pool, every transition one of the main loop's Lua scripts."""
