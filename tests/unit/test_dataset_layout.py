"""The dataset layout's look: one `find` whose NUL-terminated answer names the paths that exist."""
from __future__ import annotations

import shlex

import pytest

from evalkit.dataset_layout import existing_command, existing_from


@pytest.mark.parametrize("paths, printed, there", [
    (["/d/label_cn.txt", "/d/test"], b"/d/label_cn.txt\0/d/test\0", {"/d/label_cn.txt", "/d/test"}),
    (["/d/label_cn.txt", "/d/valid"], b"", set()),
    (["/数据/a b/label_cn.txt"], "/数据/a b/label_cn.txt\0".encode(), {"/数据/a b/label_cn.txt"}),
    (["/d/with\nnewline"], b"/d/with\nnewline\0", {"/d/with\nnewline"}),  # NUL, not lines
    (["datasets/x"], b"./datasets/x\0", {"datasets/x"}),  # relative: as find printed it
    (["-x"], b"./-x\0", {"-x"}),
])
def test_what_find_printed_is_what_exists(paths, printed, there):
    assert existing_from(printed, paths) == there


def test_every_path_reaches_find_quoted_and_never_as_an_option():
    command = existing_command(["/d/it's; rm -rf ~", "-delete"])
    assert shlex.split(command) == ["find", "/d/it's; rm -rf ~", "./-delete", "-maxdepth", "0", "-print0"]
