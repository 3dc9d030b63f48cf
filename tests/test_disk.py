"""Files and folders written whole get the permissions the umask gives any new file (issue 27, finding 4):
a model exported for a server running as another user is readable by it."""

from __future__ import annotations

import os
import stat

import pytest

from thickets.disk import umask, write_whole, written_whole


@pytest.fixture(params=[0o022, 0o077, 0o002])
def mask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_whole_files_and_folders_follow_the_umask(tmp_path, mask):
    assert umask() == mask
    with written_whole(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "config.json").write_text("{}")
        (tmp / "sub" / "weights.bin").write_bytes(b"x")
    out = tmp_path / "model"
    assert _mode(out) == _mode(out / "sub") == 0o777 & ~mask
    assert _mode(out / "config.json") == _mode(out / "sub" / "weights.bin") == 0o666 & ~mask
    write_whole(tmp_path / "record.json", "{}")
    assert _mode(tmp_path / "record.json") == 0o666 & ~mask
