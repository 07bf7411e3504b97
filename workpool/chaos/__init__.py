"""Fault injection for workpool: a seeded chaos runner, the history every process records, and
a checker that proves (or disproves) the guarantees from that history alone.

`python -m workpool.chaos --help` runs it; README "Guarantees" has the figures.
"""
