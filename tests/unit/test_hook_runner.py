"""The hook runner on real processes: a failing hook's own words, however much it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollingops.hook_runner import HookFailedError, HookRunner

TIMEOUT = 20.0


def runner_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "juju-exec"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_hook_that_fails_after_a_long_traceback_fails_with_its_last_words(tmp_path):
    """200 KiB on stderr used to fill the unread pipe: the hook blocked until the timeout."""
    script = runner_script(
        tmp_path,
        "yes 'File \"charm.py\", line 1' | head -c 204800 >&2\necho 'the real reason' >&2\nexit 3",
    )
    runner = HookRunner(script, "app/0", tmp_path, TIMEOUT)
    with pytest.raises(HookFailedError) as failed:
        runner.fire("rollingops-lock-granted")
    message = str(failed.value)
    assert message.startswith("rollingops-lock-granted: exit 3: ")
    assert message.endswith("the real reason\n")
    assert len(message) < 600, "only the end of what it said"


def test_a_hook_that_succeeds_raises_nothing(tmp_path):
    runner = HookRunner(runner_script(tmp_path, "echo fine >&2"), "app/0", tmp_path, TIMEOUT)
    runner.fire("rollingops-lock-granted")
