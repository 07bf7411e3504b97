"""Counter names are written once (workpool/counters.py) for both languages: every script
bumps a counter through the rendered `N` table, never by a bare string, and every name it uses
exists there."""

from __future__ import annotations

import re

from workpool.counters import NAMES, lua_prelude
from workpool.scripts import scripts

BARE = re.compile(r"bump\([^,]+,\s*'")
USED = re.compile(r"\bN\.([A-Z_]+)")


def test_no_script_bumps_a_counter_by_a_bare_string() -> None:
    found = sorted(name for name, s in scripts().items() if BARE.search(s.source))
    assert not found, f"bare counter names in {found}: use N.<NAME> (counters.py)"


def test_every_counter_a_script_names_is_in_the_table_and_every_script_has_the_table() -> None:
    used = {m for s in scripts().values() for m in USED.findall(s.source)}
    assert used, "the scripts name no counter at all: the pattern is wrong"
    assert used <= set(NAMES), f"unknown counters {sorted(used - set(NAMES))}"
    assert all(s.source.startswith(("local C", "local L", "local N")) and lua_prelude() in s.source
               for s in scripts().values())
