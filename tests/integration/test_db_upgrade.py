"""`msgspool db upgrade` (issue 11.3): the schema brought to this version's on either store, once;
what it applied is said, and a second run finds it current."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from msgspool import cli
from msgspool.stores.postgresql import migrations
from tests.support import pg


def test_on_sqlite_it_makes_the_spool_then_finds_it_current(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGSPOOL_STORE", "sqlite")
    data = str(tmp_path / "spool")
    assert cli.main(["db", "upgrade", "--data", data]) == 0
    assert capsys.readouterr().out.startswith("applied new spool, schema ")
    assert cli.main(["db", "upgrade", "--data", data]) == 0
    assert capsys.readouterr().out == "the schema is current\n"
    assert (tmp_path / "spool" / "spool.db").exists()


def test_on_postgresql_it_applies_each_migration_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pg.fresh_database() as url:
        monkeypatch.setenv("MSGSPOOL_STORE", "postgresql")
        monkeypatch.setenv("MSGSPOOL_DATABASE_URL", url)
        data = str(tmp_path / "node")
        assert cli.main(["queue", "list", "--data", data]) == 1  # no spool in that database yet
        assert "no spool in the database" in capsys.readouterr().err
        assert cli.main(["db", "upgrade", "--data", data]) == 0
        assert capsys.readouterr().out.splitlines() == [f"applied {name}" for _v, name, _s in migrations()]
        assert cli.main(["db", "upgrade", "--data", data]) == 0
        assert capsys.readouterr().out == "the schema is current\n"
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(migrations()),)
        assert cli.main(["queue", "list", "--data", data]) == 0


def test_postgresql_without_a_database_url_is_a_configuration_error(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    monkeypatch.setenv("MSGSPOOL_STORE", "postgresql")
    monkeypatch.delenv("MSGSPOOL_DATABASE_URL", raising=False)
    assert cli.main(["db", "upgrade", "--data", str(tmp_path)]) == 2
    assert "needs database_url" in capsys.readouterr().err
