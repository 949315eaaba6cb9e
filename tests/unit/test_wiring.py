"""The composition root (spooler/wiring.py): every part gets its collaborators at construction,
every signal is answered, and nothing outside a part assigns into it afterwards."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from msgspool.config import Settings
from msgspool.spooler.wiring import Signals, build_parts

SRC = Path(__file__).resolve().parents[2] / "src" / "msgspool"
# The parts build_parts makes: assigning an attribute of one from outside it is wiring late.
PARTS = {"scheduler", "reporter", "lease", "bus", "intake", "store", "webhooks", "notices", "receipts",
         "delay_timer", "delivery", "metrics", "hints"}
# State, not wiring: the node the store claims for is the lease's, set at each start as a new node.
ALLOWED = {"spooler/lease.py: self.store.owner"}


def parts_of(tmp_path: Path, **overrides: object) -> object:
    settings = Settings(data_dir=str(tmp_path / "spool"), store="memory", smtp_listen="", http_listen="")
    settings.merge(dict(overrides), "test")
    return build_parts(settings)


def test_every_signal_is_answered_and_rung_by_the_parts_it_names(tmp_path: Path) -> None:
    parts = parts_of(tmp_path, webhooks=[{"url": "https://hooks.example/in", "secret": "s" * 32}],
                     delay_warning_time=3600)
    signals: Signals = parts.signals  # type: ignore[attr-defined]
    for field in dataclasses.fields(Signals):
        signal = getattr(signals, field.name)
        assert signal._slots, f"signal {field.name} has nobody answering it"
    assert parts.scheduler.on_reports is signals.reports  # type: ignore[attr-defined]
    assert parts.lease.on_nodes is signals.nodes and parts.lease.on_lost is signals.lease_lost  # type: ignore[attr-defined]
    assert parts.delay_timer is not None and parts.scheduler.on_warning_later == parts.delay_timer.expect  # type: ignore[attr-defined]
    assert parts.bus.on_listeners is signals.listeners  # type: ignore[attr-defined]
    assert parts.store.on_commit is not None  # type: ignore[attr-defined]


def test_ringing_due_wakes_the_scheduler_and_reports_pokes_the_reporter(tmp_path: Path) -> None:
    parts = parts_of(tmp_path)
    woken: list[str] = []
    parts.signals.due.connect(lambda: woken.append("due"))  # type: ignore[attr-defined]
    parts.signals.due()  # type: ignore[attr-defined]
    assert parts.scheduler._wakeup.is_set() and woken == ["due"]  # type: ignore[attr-defined]


def test_no_module_assigns_into_a_part_from_outside() -> None:
    """`x.scheduler.on_reports = ...` (or any part's attribute) outside the part's own class is
    what the composition root replaced: parts take their collaborators in their constructors."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) \
                        and target.value.attr in PARTS \
                        and f"{path.relative_to(SRC)}: {ast.unparse(target)}" not in ALLOWED:
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(target)}")
    assert not found, "assigned into a part after construction:\n" + "\n".join(found)
