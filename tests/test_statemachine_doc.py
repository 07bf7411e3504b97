"""statemachine.md is the contract: its table must be the code's TABLE, and name every code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from workpool.wire.codes import Code
from workpool.wire.statemachine import TABLE, WORKFLOW_TABLE, markdown_table

DOC = Path(__file__).resolve().parent.parent / "statemachine.md"
START, END = "<!-- table:start -->", "<!-- table:end -->"


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _table_in_doc() -> str:
    lines = _doc().splitlines()
    assert lines.count(START) == 1, f"{START} must be on its own line, once"
    assert lines.count(END) == 1, f"{END} must be on its own line, once"
    return "\n".join(lines[lines.index(START) + 1:lines.index(END)])


def test_the_table_in_statemachine_md_is_exactly_the_transition_table() -> None:
    assert _table_in_doc() == markdown_table()


def test_the_workflow_table_in_statemachine_md_is_exactly_the_workflow_table() -> None:
    lines = _doc().splitlines()
    start, end = "<!-- workflow-table:start -->", "<!-- workflow-table:end -->"
    assert lines.count(start) == 1 and lines.count(end) == 1
    assert "\n".join(lines[lines.index(start) + 1:lines.index(end)]) == \
        markdown_table(WORKFLOW_TABLE)
    out = subprocess.run([sys.executable, "-m", "workpool.wire.statemachine", "workflows"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.rstrip("\n") == markdown_table(WORKFLOW_TABLE)


def test_the_table_is_what_python_m_workpool_statemachine_prints() -> None:
    out = subprocess.run([sys.executable, "-m", "workpool.wire.statemachine"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.rstrip("\n") == _table_in_doc()


def test_every_code_of_the_transition_table_appears_in_the_doc() -> None:
    doc = _doc()
    missing = {row.code.name for row in (*TABLE, *WORKFLOW_TABLE)
               if not re.search(rf"\b{row.code.name}\b", doc)}
    assert not missing


def test_the_result_code_table_lists_every_code_with_its_value() -> None:
    doc = _doc()
    for code in Code:
        assert re.search(rf"^\| {code.name} \| {code.value} \|", doc, re.MULTILINE), code.name


def test_the_doc_has_a_mermaid_state_diagram_with_every_state() -> None:
    doc = _doc()
    match = re.search(r"```mermaid\n(.*?)```", doc, re.DOTALL)
    assert match is not None
    diagram = match.group(1)
    assert diagram.startswith("stateDiagram-v2")
    for state in ("pending", "running", "retrying", "done/succeeded", "done/failed", "canceled"):
        assert state in diagram
