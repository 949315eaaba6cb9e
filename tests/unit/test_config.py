"""Settings: defaults, then a TOML file, then MSGSPOOL_DATA, then the command line; unknown keys and
wrong types are refused with ConfigError."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from msgspool.config import CONFIG_NAME, ConfigError, Settings, load, settings_doc
from msgspool.errors import MsgspoolError


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MSGSPOOL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # so ./msgspool-data/msgspool.toml is ours, not the developer's


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_apply_without_any_file() -> None:
    settings = load()
    assert (settings.data_dir, settings.smtp_listen, settings.local_domains) == (
        "./msgspool-data", "127.0.0.1:2525", ["localhost"])


def test_msgspool_toml_in_the_default_data_dir_is_read() -> None:
    write(Path("msgspool-data") / CONFIG_NAME, 'relay = "smart.example:587"\n')
    assert load().relay == "smart.example:587"


def test_msgspool_toml_in_the_given_data_dir_is_read(tmp_path: Path) -> None:
    write(tmp_path / "spool" / CONFIG_NAME, "recipient_limit = 7\n")
    settings = load(data_dir=str(tmp_path / "spool"))
    assert (settings.recipient_limit, settings.data_dir) == (7, str(tmp_path / "spool"))


def test_msgspool_data_environment_chooses_the_data_dir_and_its_toml(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "env-spool" / CONFIG_NAME, "recipient_limit = 9\n")
    monkeypatch.setenv("MSGSPOOL_DATA", str(tmp_path / "env-spool"))
    settings = load()
    assert (settings.data_dir, settings.recipient_limit) == (str(tmp_path / "env-spool"), 9)


def test_data_dir_argument_wins_over_msgspool_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGSPOOL_DATA", str(tmp_path / "env-spool"))
    assert load(data_dir=str(tmp_path / "cli-spool")).data_dir == str(tmp_path / "cli-spool")


def test_msgspool_data_wins_over_data_dir_in_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "a.toml", 'data_dir = "/from/toml"\n')
    monkeypatch.setenv("MSGSPOOL_DATA", str(tmp_path / "env-spool"))
    assert load(str(config)).data_dir == str(tmp_path / "env-spool")


def test_explicit_config_file_replaces_the_one_in_the_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "spool" / CONFIG_NAME, 'relay = "from-data-dir:25"\nrecipient_limit = 3\n')
    config = write(tmp_path / "explicit.toml", 'relay = "explicit:25"\n')
    settings = load(str(config), str(tmp_path / "spool"))
    assert (settings.relay, settings.recipient_limit) == ("explicit:25", 1000)


def test_command_line_wins_over_the_toml_file_and_none_means_not_given(tmp_path: Path) -> None:
    config = write(tmp_path / "a.toml", 'relay = "toml:25"\nsmtp_listen = "0.0.0.0:25"\n')
    settings = load(str(config), relay="cli:2525", smtp_listen=None)
    assert (settings.relay, settings.smtp_listen) == ("cli:2525", "0.0.0.0:25")


def test_transports_are_read_as_an_array_of_tables(tmp_path: Path) -> None:
    config = write(tmp_path / "a.toml", '[[transports]]\nname = "hooks"\ntype = "http"\naddrtypes = ["HTTP"]\n'
                                        'timeout = 5\n')
    assert load(str(config)).transports == [{"name": "hooks", "type": "http", "addrtypes": ["HTTP"], "timeout": 5}]


def test_unknown_key_is_a_config_error_naming_file_and_key(tmp_path: Path) -> None:
    config = write(tmp_path / "a.toml", "relay_host = 1\n")
    with pytest.raises(ConfigError, match=r"a\.toml: unknown setting 'relay_host'"):
        load(str(config))


def test_unknown_command_line_setting_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="command line: unknown setting 'nope'"):
        load(nope=1)


@pytest.mark.parametrize(("key", "value"), [("recipient_limit", '"10"'), ("recipient_limit", "10.5"),
                                            ("relay", "25"), ("local_domains", '"example.org"'),
                                            ("min_backoff", '"300"'), ("transports", '{name = "x"}')])
def test_value_of_the_wrong_type_is_a_config_error(tmp_path: Path, key: str, value: str) -> None:
    config = write(tmp_path / "a.toml", f"{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"{key} must be"):
        load(str(config))


def test_integer_for_a_float_setting_becomes_a_float(tmp_path: Path) -> None:
    settings = load(str(write(tmp_path / "a.toml", "min_backoff = 60\n")))
    assert settings.min_backoff == 60.0 and isinstance(settings.min_backoff, float)


def test_missing_or_malformed_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load(str(write(tmp_path / "bad.toml", "relay = \n")))


def test_list_defaults_are_not_shared_between_settings_objects() -> None:
    first = Settings()
    first.local_domains.append("example.org")
    assert Settings().local_domains == ["localhost"]


def test_every_setting_has_a_sentence_in_settings_doc() -> None:
    doc = settings_doc()
    assert [key for key, _d, _s in doc] == [f.name for f in fields(Settings)]
    assert all(sentence.endswith(".") and default == getattr(Settings(), key) for key, default, sentence in doc)


def test_boolean_for_an_integer_setting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load(str(write(tmp_path / "a.toml", "recipient_limit = true\n")))


def test_config_error_is_a_msgspool_error() -> None:
    assert issubclass(ConfigError, MsgspoolError)
