"""Every change of a recipient's state the code takes is in the table (issue 11.1), proved from the
SQL: the only statements that write `recipients.status` are those of stores/ops.py WRITES, each
bound to a domain step (domain/transitions.py); each takes its new state from the step's decision
(`status = :status`, checked by the step when `_set_status` runs it) and its guard names exactly
the states the step moves from. So the changes the stores can make are the steps' pairs, and those
are in TRANSITIONS."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import msgspool
from msgspool.domain import transitions
from msgspool.domain.recipient import TRANSITIONS, Status
from msgspool.stores import ops
from msgspool.stores.queries import FILES, parse

SQL_DIR = Path(ops.__file__).parent
SRC = Path(msgspool.__file__).parent
# `UPDATE recipients [alias] SET ...`: the assignments run to WHERE or FROM at the top level.
UPDATE = re.compile(r"\bUPDATE\s+recipients(?:\s+(?!SET\b)\w+)?\s+SET\s+(?P<rest>.*)", re.S | re.I)
WRITES_STATUS = re.compile(r"(?:^|,)\s*(?:\w+\.)?status\s*=", re.I)
STATE = re.compile(r"'(" + "|".join(s.value for s in Status) + r")'")


def blocks() -> list[tuple[str, str, str]]:
    """(file, name, sql) of every named statement of both dialects."""
    return [(path, name, sql) for path in dict.fromkeys(p for paths in FILES.values() for p in paths)
            for name, sql in parse((SQL_DIR / path).read_text(encoding="utf-8"), path).items()]


def assignments_and_rest(sql: str) -> tuple[str, str] | None:
    """An UPDATE of recipients split into its SET list and the rest of the statement (the guard:
    its WHERE, and a WITH before it that picks the rows)."""
    found = UPDATE.search(sql)
    if found is None:
        return None
    before, rest = sql[:found.start()], found.group("rest")
    depth = 0
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and re.match(r"\s(WHERE|FROM)\s", rest[i:i + 7], re.I):
            return rest[:i], before + rest[i:]
    return rest, before


def status_writers() -> dict[tuple[str, str], tuple[str, str]]:
    out = {}
    for path, name, sql in blocks():
        split = assignments_and_rest(sql)
        if split is not None and WRITES_STATUS.search(split[0]):
            out[(path, name)] = split
    return out


def test_the_scan_finds_status_writes_and_their_guards() -> None:
    split = assignments_and_rest("UPDATE recipients r SET status = :status, owner = NULL FROM due"
                                 " WHERE r.status IN ('queued', 'deferred')")
    assert split is not None and WRITES_STATUS.search(split[0]) and set(STATE.findall(split[1])) == {
        "queued", "deferred"}
    kept = assignments_and_rest("UPDATE recipients SET next_attempt_at = :now WHERE status = 'deferred'")
    assert kept is not None and not WRITES_STATUS.search(kept[0])
    assert status_writers()  # the files have some


def test_only_the_statements_bound_to_a_step_write_a_recipients_state() -> None:
    assert {name for _path, name in status_writers()} == set(ops.WRITES)


@pytest.mark.parametrize("where", sorted(status_writers()), ids=lambda k: f"{k[0]}:{k[1]}")
def test_each_state_writer_applies_its_steps_decision_under_its_steps_guard(where: tuple[str, str]) -> None:
    assignments, guard = status_writers()[where]
    step = ops.WRITES[where[1]]
    assert re.search(r"(?:^|,)\s*status\s*=\s*:status\s*(?:,|$)", assignments.strip()), \
        f"{where}: the new state must be the decision's (:status), not chosen in SQL"
    assert not STATE.search(assignments), f"{where}: no state chosen in the SET list"
    assert {Status(s) for s in STATE.findall(guard)} == set(step.sources), f"{where}: the guard is not {step.name}'s"


def test_every_change_the_stores_can_make_is_in_the_table() -> None:
    taken = set().union(*(step.pairs() for step in ops.WRITES.values()))
    assert taken and all(new in TRANSITIONS[old] for old, new in taken)


def test_a_new_recipient_is_written_by_one_insert_only() -> None:
    inserts = [name for _path, name, sql in blocks() if re.search(r"\bINSERT\s+INTO\s+recipients\b", sql, re.I)]
    assert inserts == ["insert_recipient", "insert_recipient_rows"]  # and PostgreSQL's many-rows form of it


def test_no_python_module_writes_a_recipients_state() -> None:
    pattern = re.compile(r"UPDATE\s+recipients\b[^\"']*\bSET\b[^\"']*\bstatus\s*=", re.I)
    found = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
             if any(pattern.search(node.value) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str))]
    assert found == []


def test_the_steps_run_state_writers_only_by_their_names_in_writes() -> None:
    tree = ast.parse(Path(ops.__file__).read_text(encoding="utf-8"))
    named = {node.args[1].value for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_set_status"
             and isinstance(node.args[1], ast.Constant)}
    assert named and named <= set(ops.WRITES)
    direct = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in ops.WRITES
              and isinstance(node.value, ast.Attribute | ast.Name)
              and getattr(node.value, "attr", getattr(node.value, "id", "")) == "q"}
    assert direct == set(), "a state writer run past _set_status (and its step's check)"


def test_every_step_of_the_domain_is_applied_by_some_statement() -> None:
    assert set(transitions.STEPS) == set(ops.WRITES.values())


def state_lists() -> list[tuple[str, frozenset[Status]]]:
    """(statement, states) of every `status IN (...)` list of literals in both dialects' SQL."""
    found = []
    for _path, name, sql in blocks():
        for listed in re.findall(r"\bstatus\s+IN\s*\(([^)]*)\)", sql, re.I):
            found.append((name, frozenset(Status(s) for s in STATE.findall(listed))))
    return found


def test_the_state_sets_statements_select_by_are_the_domains_named_ones() -> None:
    named = set(transitions.NAMED_SETS.values())
    assert state_lists() and [(name, states) for name, states in state_lists() if states not in named] == []


def test_only_finishing_moves_a_message_out_of_the_outbox_and_only_with_nothing_pending() -> None:
    movers = [(name, sql) for _path, name, sql in blocks()
              if re.search(r"\bUPDATE\s+messages\s+SET\b(?:(?!\bWHERE\b).)*\bfolder\s*=", sql, re.I | re.S)]
    assert [name for name, _sql in movers] == ["finish_to_sent"]
    [(_name, sql)] = movers
    assert "folder = :outbox" in sql and re.search(r"NOT EXISTS \(SELECT 1 FROM recipients", sql)
    assert ("finish_to_sent", transitions.PENDING) in state_lists()
