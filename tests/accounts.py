"""A second, ordinary account on the machine, for tests of what another local user can do.

Creating one takes root (useradd); without it the tests that need one are skipped
with the reason. Each account has a unique name and is removed afterwards.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Runs `argv` as this account (no supplementary groups), in its own session."""
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            argv, user=self.uid, group=self.gid, extra_groups=[], start_new_session=True, **kwargs
        )

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, user=self.uid, group=self.gid, extra_groups=[], capture_output=True, text=True, check=False
        )


def skip_unless_root() -> None:
    if os.getuid() != 0:
        pytest.skip("a second account takes root to create (useradd); run the tests as root to check this")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed: no second account can be made")


@pytest.fixture
def other_account() -> Iterator[Account]:
    """A new ordinary account (uid >= 1000, no home, no login shell), removed after the test."""
    skip_unless_root()
    name = f"kvst{uuid.uuid4().hex[:10]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        info = pwd.getpwnam(name)
        yield Account(name, info.pw_uid, info.pw_gid)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
