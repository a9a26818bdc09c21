"""Reading `df -Pk` for the disk a refused write was on: its mount point (spaces kept) and free bytes."""
from __future__ import annotations

import pytest

from evalkit.ssh.server_disk import parse_df


@pytest.mark.parametrize("output, disk", [
    ("Filesystem 1024-blocks Used Available Capacity Mounted on\n"
     "tmpfs 16384 16384 0 100% /tmp/test bed/small disk\n", ("/tmp/test bed/small disk", 0)),
    ("Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
     "/dev/nvme0n1p2  490617784 412345678  53245678      89% /\n", ("/", 53245678 * 1024)),
    ("df: /nowhere: No such file or directory\n", None),
    ("", None),
])
def test_the_mount_point_and_free_bytes_are_read(output, disk):
    assert parse_df(output) == disk
