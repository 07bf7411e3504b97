"""Names the scripts and Python share are written once, in Python, and rendered into every
script: counter names (workpool/wire/counters.py, `N`: no script bumps a counter by a bare string,
and every name it uses exists) and the packed field order of pending jobs
(protocol.UNSTARTED_FIELDS, `UNSTARTED`: no Lua file lists it again)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from workpool.wire import protocol
from workpool.wire.counters import NAMES, lua_prelude
from workpool.wire.scripts import scripts

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


def test_the_packed_field_order_is_rendered_from_python_and_listed_in_no_lua_file() -> None:
    lua = resources.files("workpool") / "lua"
    files = [*lua.iterdir(), *(lua / "includes").iterdir()]
    order = re.compile(r",\s*".join(f"'{n}'" for n in protocol.UNSTARTED_FIELDS[:4]))
    listed = [f.name for f in files if f.name.endswith(".lua") and order.search(f.read_text())]
    assert not listed, f"{listed} list the packed field order again: use UNSTARTED"
    assert all(protocol.lua_prelude() in s.source for s in scripts().values())
    assert protocol.lua_prelude().count("'") == 2 * len(protocol.UNSTARTED_FIELDS)


def test_docs_protocol_gives_the_packed_field_order_the_code_uses() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    listed = re.search(r"in this order:\s*`([^`]+)`", doc)
    assert listed is not None, "docs/protocol.md no longer states the packed field order"
    assert tuple(re.split(r",\s*", listed.group(1).strip())) == protocol.UNSTARTED_FIELDS
