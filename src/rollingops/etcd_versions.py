"""etcd releases with a known bug that breaks the lock's guarantees, and the release fixing it.

The charm cannot fix etcd, but an operator must know when the cluster runs such a release.
Reading the version costs one Maintenance.Status call, made by the worker when it starts (the
charm restarts it on every config, credential and charm change): it publishes what it read in
a file of the unit's directory, which the charm reads in any hook with no etcd request, for
the unit status and ``lock-status``. An idle hook costs no etcd call for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .files import read_private, write_private

Release = tuple[int, int, int]
VERSION_FILE_NAME = "etcd-version.json"
_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class KnownBug:
    """A bug of some etcd releases, and the first release of each line that fixes it."""

    issue: str
    effect: str
    fixed_in: tuple[Release, ...]
    """Oldest line first. A release of a listed line is affected below that line's fix; one of
    an older line is affected (its fix is the first listed); one of a newer line is not."""

    def fix_for(self, release: Release) -> Release | None:
        """The release to upgrade to from ``release``; ``None`` when it is not affected."""
        for fixed in self.fixed_in:
            if fixed[:2] == release[:2]:
                return fixed if release < fixed else None
        return self.fixed_in[0] if release < self.fixed_in[0] else None


KNOWN_BUGS = (
    KnownBug(
        issue="etcd-io/etcd#15247",
        effect="may revoke live leases when a paused leader resumes",
        # etcd-io/etcd#16822 (ignore an old leader's lease revocations): on main before the
        # 3.6 branch, backported as #17465 (3.4.31) and #17425 (3.5.13), per the changelogs.
        fixed_in=((3, 4, 31), (3, 5, 13), (3, 6, 0)),
    ),
)


def parse_release(version: str) -> Release | None:
    """``(3, 5, 1)`` from ``3.5.1`` (a pre-release suffix is ignored); ``None`` if not one."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def warnings(version: str) -> list[str]:
    """One short sentence for each known bug of ``version``, naming the release that fixes it.

    Short enough for the unit's status message, where an operator sees it.
    """
    release = parse_release(version)
    if release is None:
        return []
    return [
        f"etcd {version} {bug.effect} ({bug.issue}): upgrade to {'.'.join(map(str, fix))}+"
        for bug in KNOWN_BUGS
        if (fix := bug.fix_for(release)) is not None
    ]


class ObservedVersion(BaseModel):
    """What the worker last read from etcd's Maintenance.Status."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str


def version_file(state_dir: Path) -> Path:
    """Where one unit's worker publishes the etcd version it read."""
    return state_dir / VERSION_FILE_NAME


def publish(state_dir: Path, version: str) -> None:
    """Worker side: record the version etcd reported (0600, atomically)."""
    write_private(version_file(state_dir), ObservedVersion(version=version).model_dump_json())


def observed(state_dir: Path) -> str:
    """Charm side: the version the worker last read; "" when none was read or it is unreadable."""
    text = read_private(version_file(state_dir))
    if not text:
        return ""
    try:
        return ObservedVersion.model_validate_json(text).version
    except ValidationError:
        return ""
