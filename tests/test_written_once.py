"""Names the scripts and Python share are written once, in Python, and rendered into every
script: counter names (wire/counters.py, `N`: no script bumps a counter by a bare string, and
every name it uses exists), key suffixes (wire/keys.py, `K`: no script spells one, and
docs/protocol.md lists exactly them), the field order of a job's packed spec
(protocol.SPEC_FIELDS, `SPEC` and `S`: no Lua file lists it again) and the reply layouts
(wire/replies.py, `R`: each script's documented reply is the layout Python reads)."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest
import redis

from workpool import Retry, Workpool
from workpool.wire import protocol
from workpool.wire.codes import lua_prelude as codes_prelude
from workpool.wire.counters import NAMES, lua_prelude
from workpool.wire.keys import KEY, Keys
from workpool.wire.keys import lua_prelude as keys_prelude
from workpool.wire.limits import lua_prelude as limits_prelude
from workpool.wire.replies import LAYOUTS
from workpool.wire.replies import lua_prelude as replies_prelude
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


@pytest.mark.parametrize(("names", "at", "order"), [("SPEC", "S", protocol.SPEC_FIELDS),
                                                     ("JOURNAL", "J", protocol.JOURNAL_FIELDS)])
def test_the_packed_field_order_is_rendered_from_python_and_listed_in_no_lua_file(
        names: str, at: str, order: tuple[str, ...]) -> None:
    lua = resources.files("workpool") / "lua"
    files = [*lua.iterdir(), *(lua / "includes").iterdir()]
    again = re.compile(r",\s*".join(f"'{n}'" for n in order[:4]))
    listed = [f.name for f in files if f.name.endswith(".lua") and again.search(f.read_text())]
    assert not listed, f"{listed} list the packed field order again: use {names} and {at}"
    assert all(protocol.lua_prelude() in s.source for s in scripts().values())
    rendered = re.search(rf"^local {names} = \{{(.*)\}}$", protocol.lua_prelude(), re.MULTILINE)
    assert rendered is not None and rendered.group(1) == ", ".join(f"'{n}'" for n in order)
    positions = re.search(rf"^local {at} = \{{(.*)\}}$", protocol.lua_prelude(), re.MULTILINE)
    assert positions is not None
    assert dict(re.findall(r"(\w+) = (\d+)", positions.group(1))) == \
        {name: str(i) for i, name in enumerate(order, 1)}


def test_docs_protocol_gives_the_packed_field_order_the_code_uses() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    listed = re.search(r"in this order:\s*`([^`]+)`", doc)
    assert listed is not None, "docs/protocol.md no longer states the packed field order"
    assert tuple(re.split(r",\s*", listed.group(1).strip())) == protocol.SPEC_FIELDS
    journal = re.search(r"array of the journal fields:\s*`([^`]+)`", doc)
    assert journal is not None, "docs/protocol.md no longer states the journal's field order"
    assert tuple(re.split(r",\s*", journal.group(1).strip())) == protocol.JOURNAL_FIELDS


KEY_LITERAL = re.compile(r"\.\.\s*'(" + "|".join(re.escape(v) for v in KEY.values()) + r")'")
RETURNS = re.compile(r"^-- Returns R\.(\w+) \{([^}]*)\}", re.MULTILINE)
COMMENT = re.compile(r"\n--\s*")


def _lua_files() -> list[Path]:
    lua = Path(__file__).resolve().parents[1] / "workpool" / "lua"
    return sorted(lua.rglob("*.lua"))


def test_no_script_spells_a_key_name_and_every_script_has_the_key_table() -> None:
    spelt = {f.name: KEY_LITERAL.findall(f.read_text()) for f in _lua_files()}
    spelt = {name: found for name, found in spelt.items() if found}
    assert not spelt, f"key suffixes spelt in Lua: {spelt}; use K.<name> (wire/keys.py)"
    used = {m for f in _lua_files() for m in re.findall(r"\bK\.(\w+)", f.read_text())}
    assert used, "the scripts use no key table entry at all: the pattern is wrong"
    assert used <= set(KEY), f"unknown key names {sorted(used - set(KEY))}"
    assert all(keys_prelude() in s.source for s in scripts().values())


def test_every_key_of_a_pool_is_built_from_the_table() -> None:
    keys = Keys("p")
    for name, suffix in KEY.items():
        built = getattr(keys, name)
        value = built if isinstance(built, str) else built("x")
        assert value in {keys.prefix + suffix, keys.prefix + suffix + "x"}, name


def test_docs_protocol_lists_every_key_the_table_has_and_no_other() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    section = doc.split("## Keys", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `{wp:P}:")]
    listed = {re.sub(r"<[^>]*>$", "", name.removeprefix("{wp:P}:"))
              for row in rows for name in re.findall(r"`([^`]+)`", row)}
    assert listed == set(KEY.values()), (
        f"docs/protocol.md's key table lacks {sorted(set(KEY.values()) - listed)} and "
        f"lists unknown {sorted(listed - set(KEY.values()))}")


def test_each_script_documents_its_reply_in_the_layout_the_code_reads() -> None:
    documented = {}
    for f in _lua_files():
        for kind, fields in RETURNS.findall(f.read_text()):
            documented[f.name] = kind
            listed = [x.strip() for x in COMMENT.sub(" ", fields).split(",")]
            layout = [field.name for field in dataclasses.fields(LAYOUTS[kind])
                      if not field.metadata.get("tail")]
            assert listed[:len(layout)] == layout, (f.name, listed, layout)
    undocumented = set(scripts()) - {name.split("-")[0] for name in documented}
    assert not undocumented, f"scripts without a Returns R.<kind> line: {sorted(undocumented)}"
    assert all(replies_prelude() in s.source for s in scripts().values())


def test_a_reply_missing_a_field_of_its_layout_is_an_error_not_a_short_reply(
        redis_client: redis.Redis) -> None:
    common = (Path(__file__).resolve().parents[1] / "workpool" / "lua" / "includes"
              / "common.lua").read_text()
    prelude = codes_prelude() + limits_prelude() + replies_prelude()
    whole = "return reply(R.lease, {code = C.OK, token = 'x', ttl_ms = 5}, {'t'})"
    assert redis_client.eval(prelude + common + whole, 0) == [0, b"x", 5, b"t"]
    with pytest.raises(redis.ResponseError, match="reply field ttl_ms missing"):
        redis_client.eval(prelude + common + "return reply(R.lease, {code = C.OK, token = 'x'})",
                          0)


def test_the_enqueue_fields_are_the_ones_the_client_writes_and_the_docs_list() -> None:
    pool = Workpool("fields")
    pool.job(name="work")(lambda *a, **k: None)
    pool.on_complete(name="record")(lambda *a: None)
    (entry,) = pool.build_entries(
        "work", [(1,)], kwargs={"a": 1}, on_complete="record", context={"c": 1},
        run_after=1.0, run_at=2.0, retry=Retry(max_attempts=2), key="k", timeout=3.0,
        priority=4, concurrency_key="ck")
    assert sorted(entry) == sorted(protocol.ENQUEUE_FIELDS)  # every option set: every field
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    section = doc.split("## Enqueue: `op=enqueue`", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    assert listed == list(protocol.ENQUEUE_FIELDS), "docs/protocol.md's enqueue table"
