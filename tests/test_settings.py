from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.settings import ConfigError, Settings

ROOT = Path(__file__).parent.parent


def test_every_environment_variable_is_documented_in_the_spec() -> None:
    source = (ROOT / "server" / "settings.py").read_text()
    names = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z_]+)"', source))
    names |= set(re.findall(r'_int\(env, "([A-Z_]+)"', source))
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "SETTLE_DELAY_MS"} <= names
    assert "WEB_CONCURRENCY" in names
    spec = (ROOT / "docs" / "spec.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in spec)
    assert missing == [], f"undocumented settings: {missing}"


def test_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "SETTLE_VAR_DIR": str(tmp_path),
            "SETTLE_DELAY_MS": "250",
            "PORT": "9000",
            "SECRET_KEY": "k",
        }
    )
    assert (s.settle_delay_ms, s.port, s.secret_key) == (250, 9000, "k")
    assert s.database_url == f"sqlite:///{tmp_path / 'settle.db'}" and s.redis_url is None


def test_the_generated_secret_is_kept(tmp_path: Path) -> None:
    first = Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path)}).secret_key
    assert len(first) > 40
    assert Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path)}).secret_key == first


@pytest.mark.parametrize(("name", "value"), [("PORT", "eighty"), ("SETTLE_DELAY_MS", "-5")])
def test_bad_numbers_are_configuration_errors(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), name: value})


def test_production_needs_a_secret_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_ENV": "production"})


@pytest.mark.parametrize(
    "value", ["/help", "https://bank.example/help?topic=frozen", "mailto:help@bank.example"]
)
def test_the_support_url_is_a_link_a_person_can_follow(tmp_path: Path, value: str) -> None:
    s = Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_SUPPORT_URL": value})
    assert s.support_url == value
    assert Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path)}).support_url == "/support"


@pytest.mark.parametrize(
    "value", ["javascript:alert(1)", "//evil.example", "help", '/x" onclick="y', "ftp://x"]
)
def test_a_support_url_that_is_not_a_plain_link_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="SETTLE_SUPPORT_URL"):
        Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_SUPPORT_URL": value})


@pytest.mark.parametrize(
    ("raw", "cents"),
    [("", 100_000), ("1000.00", 100_000), ("1500", 150_000), ("0.5", 50), ("0", 0), ("OFF", None)],
)
def test_the_confirmation_threshold_is_read_exactly(
    tmp_path: Path, raw: str, cents: int | None
) -> None:
    s = Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_CONFIRM_ABOVE": raw})
    assert s.confirm_above == cents


@pytest.mark.parametrize("raw", ["-1", "1.001", "1e3", "ten", "1,000.00"])
def test_a_confirmation_threshold_that_is_not_an_amount_is_refused(
    tmp_path: Path, raw: str
) -> None:
    with pytest.raises(ConfigError, match="SETTLE_CONFIRM_ABOVE"):
        Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_CONFIRM_ABOVE": raw})


def test_passkeys_relying_party_and_origin_come_from_the_public_url(tmp_path: Path) -> None:
    s = Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path)})
    assert (s.rp_id, s.origin, s.confirm_ttl_s) == ("localhost", "http://localhost:8000", 300)
    s = Settings.from_env(
        {"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_PUBLIC_URL": "https://pay.example.com/"}
    )
    assert (s.rp_id, s.origin) == ("pay.example.com", "https://pay.example.com")
    with pytest.raises(ConfigError, match="SETTLE_PUBLIC_URL"):
        Settings.from_env({"SETTLE_VAR_DIR": str(tmp_path), "SETTLE_PUBLIC_URL": "localhost"})


@pytest.mark.parametrize(
    ("database", "raw", "expected"),
    [
        (None, None, 1),  # SQLite: one write lock, so one partition
        ("postgresql://db/settle", None, 8),
        (None, "4", 4),
        ("postgresql://db/settle", "16", 16),
        (None, "0", 1),
        ("postgresql://db/settle", "5000", 1024),
    ],
)
def test_settlement_partitions_default_to_what_the_database_can_settle_side_by_side(
    tmp_path: Path, database: str | None, raw: str | None, expected: int
) -> None:
    env = {"SETTLE_VAR_DIR": str(tmp_path)}
    if database is not None:
        env["DATABASE_URL"] = database
    if raw is not None:
        env["SETTLE_PARTITIONS"] = raw
    assert Settings.from_env(env).settle_partitions == expected
