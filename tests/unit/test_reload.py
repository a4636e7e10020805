"""Config reload decisions (the file-watch loop itself runs in the integration tests)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pgtenantproxy.config import Config, load_config
from pgtenantproxy.reload import ConfigReloader

BASE = '[proxy]\nlisten = "127.0.0.1:7001"\n[routing]\nstrategy = "unified"\n'


def _reloader(tmp_path: Path) -> tuple[ConfigReloader, list[Config], Path]:
    path = tmp_path / "config.toml"
    path.write_text(BASE)
    applied: list[Config] = []
    return ConfigReloader(path, load_config(path), applied.append), applied, path


def test_a_valid_edit_is_applied_whole(tmp_path: Path) -> None:
    reloader, applied, path = _reloader(tmp_path)
    path.write_text(BASE.replace('"unified"', '"percentage"\npercentage = 30'))
    assert reloader.reload("test") is True
    assert [c.routing.strategy for c in applied] == ["percentage"]
    assert reloader.current.routing.percentage == 30
    assert (reloader.stats.succeeded, reloader.stats.failed, reloader.stats.last_failed) == (1, 0, False)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (BASE.replace('"unified"', '"bogus"'), "[routing] strategy"),
        (BASE + "percentage = 101\n", "[routing] percentage"),
        (BASE + "[metrics]\nretention = 0\n", "[metrics] retention"),
        (BASE + "[nope]\n", "[nope]"),
        (BASE + "strategy = \n", "invalid TOML"),
    ],
)
def test_an_invalid_edit_changes_nothing_and_names_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, key: str
) -> None:
    reloader, applied, path = _reloader(tmp_path)
    before = reloader.current
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="pgtenantproxy.reload"):
        assert reloader.reload("test") is False
    assert applied == [] and reloader.current is before
    assert (reloader.stats.failed, reloader.stats.last_failed) == (1, True)
    assert key in caplog.text and key in (reloader.stats.last_error or "")


def test_keys_that_need_a_restart_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reloader, applied, path = _reloader(tmp_path)
    path.write_text(BASE.replace("7001", "7002") + "[metrics]\nlisten = \"127.0.0.1:9999\"\n")
    with caplog.at_level(logging.WARNING, logger="pgtenantproxy.reload"):
        assert reloader.reload("test") is True
    assert "[proxy] listen" in caplog.text and "[metrics] listen" in caplog.text
    assert len(applied) == 1


def test_environment_overrides_still_apply_on_reload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reloader, applied, _ = _reloader(tmp_path)
    monkeypatch.setenv("SLOW_QUERY_THRESHOLD_MS", "250")
    monkeypatch.setenv("MAX_METRICS_RETENTION", "500")
    assert reloader.reload("test") is True
    assert (applied[0].metrics.slow_query_threshold_ms, applied[0].metrics.retention) == (250, 500)
