"""run-exclusive commands: argv only, bounded output, timeouts reported, never a shell."""

from __future__ import annotations

import sys

import pytest

from rollingops.command import OUTPUT_LIMIT, run_command, to_argv


def test_a_string_is_split_like_a_shell_but_never_run_by_one():
    assert to_argv("systemctl restart 'my unit' ; rm -rf /") == [
        "systemctl",
        "restart",
        "my unit",
        ";",
        "rm",
        "-rf",
        "/",
    ]
    outcome = run_command(to_argv("echo $(whoami) ; `id` | cat"), timeout=10)
    assert (outcome.exit_code, outcome.output) == (0, "$(whoami) ; `id` | cat\n")


@pytest.mark.parametrize("bad", ["", "   ", []])
def test_empty_commands_are_refused(bad):
    with pytest.raises(ValueError, match="non-empty"):
        to_argv(bad)


def test_output_is_bounded_to_its_tail():
    script = f"print('x' * {OUTPUT_LIMIT * 3}, end=''); print('END')"
    outcome = run_command([sys.executable, "-c", script], timeout=10)
    assert outcome.ok
    assert len(outcome.output) == OUTPUT_LIMIT
    assert outcome.output.endswith("END\n")


def test_timeout_and_missing_program_are_outcomes_not_errors():
    slow = run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert slow.exit_code is None
    assert "timed out after 0.5s" in slow.output
    missing = run_command(["/nonexistent/program"], timeout=5)
    assert missing.exit_code is None
    assert "could not start" in missing.output
