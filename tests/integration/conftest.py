"""Fixtures of the integration tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import demo_hooks

DEMO = {"boom": "Boom", "boom_in": "InboundBoom", "slow": "Slow", "block": "Block", "garbage": "Garbage",
        "split": "Split", "archive": "AddArchive", "tagger": "Tagger", "in_place": "InPlace",
        "malformed": "Malformed", "exits": "Exits", "async_exits": "AsyncExits", "exits_in": "InboundExits",
        "reply_in": "InboundAutoReply"}


@pytest.fixture
def demo_distribution(tmp_path: Path) -> Iterator[None]:
    """A test distribution whose entry points name the hooks and transport of tests/support/demo_hooks.py."""
    dist = tmp_path / "dist" / "demo_hooks-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-hooks\nVersion: 1.0\n")
    hooks = "".join(f"{name} = tests.support.demo_hooks:{cls}\n" for name, cls in DEMO.items())
    (dist / "entry_points.txt").write_text(
        f"[msgspool.hooks]\n{hooks}\n[msgspool.transports]\ncrash = tests.support.demo_hooks:CrashTransport\n")
    sys.path.insert(0, str(dist.parent))
    demo_hooks.STATE.update(broken=True, crashes=0)
    try:
        yield
    finally:
        sys.path.remove(str(dist.parent))
