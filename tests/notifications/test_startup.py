"""The notify worker refuses to start with a channel that cannot deliver (SES sender)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.platform.settings import Settings, ses_sender_problem

ROOT = Path(__file__).resolve().parents[2]

REFUSED = ["", "  ", "no-reply@example.com", "tickets@EXAMPLE.org", "a@mail.example.net",
           "a@shop.example", "a@b.test", "a@b.invalid", "a@host.localhost", "Tickets <t@example.com>",
           "not-an-address", "@example.co"]
ACCEPTED = ["tickets@box-office.ticketing.dev", "Tickets <t@myexample.com>", "a@example.co.uk"]


@pytest.mark.parametrize("sender", REFUSED)
def test_placeholder_or_missing_sender_is_refused(sender: str) -> None:
    assert ses_sender_problem(sender)


@pytest.mark.parametrize("sender", ACCEPTED)
def test_a_real_domain_is_accepted(sender: str) -> None:
    assert ses_sender_problem(sender) is None


def test_no_sender_by_default() -> None:
    assert Settings(_env_file=None).ses_sender == ""  # type: ignore[call-arg]


def test_env_example_ships_no_sender() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert "SES_SENDER=" in lines
    assert not [line for line in lines if line.startswith("SES_SENDER=") and line != "SES_SENDER="]


def test_ses_channel_is_not_built_with_a_placeholder_sender(monkeypatch: pytest.MonkeyPatch) -> None:
    from functions.notify.channels import build_channel
    from shared.platform.settings import get_settings

    monkeypatch.setenv("SES_SENDER", "no-reply@example.com")
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match="reserved domain"):
            build_channel("ses")
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("sender", [None, "no-reply@example.com"])
def test_worker_exits_2_with_one_line(sender: str | None, tmp_path: Path) -> None:
    """The real `celery worker` command, in a directory without a `.env`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SES_", "NOTIFY_", "APP_ENV"))}
    env.update(PYTHONPATH=str(ROOT), NOTIFY_CHANNEL="ses", WORKER_METRICS_PORT="0")
    if sender is not None:
        env["SES_SENDER"] = sender
    celery = Path(sys.executable).parent / "celery"
    done = subprocess.run([str(celery), "-A", "functions.notify.worker", "worker", "--pool=solo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    refusal = [line for line in done.stderr.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1 and "SES_SENDER" in refusal[0], done.stderr[-2000:]
