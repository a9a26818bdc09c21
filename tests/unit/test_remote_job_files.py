"""The files a run's driver writes for the laptop to poll (remote/run_files.py): a reader sees each
one whole or not at all, never half-written."""
from __future__ import annotations

import os

import pytest

from evalkit.remote import run_files


def test_a_file_appears_under_its_name_only_with_all_of_its_content(tmp_path, monkeypatch):
    path = tmp_path / "step-3.exit"
    seen_at_rename = []
    rename = os.replace

    def watched_rename(source, target):
        seen_at_rename.append(open(source, encoding="utf-8").read())  # what a poller would read next
        rename(source, target)

    monkeypatch.setattr(run_files.os, "replace", watched_rename)
    run_files.write_atomically(str(path), "0\n9.125\n")
    assert seen_at_rename == ["0\n9.125\n"]
    assert path.read_text() == "0\n9.125\n"
    assert [p.name for p in tmp_path.iterdir()] == ["step-3.exit"]


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path, monkeypatch):
    def no_rename(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files.os, "replace", no_rename)
    with pytest.raises(OSError):
        run_files.write_atomically(str(tmp_path / "status.json"), "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_planted_at_the_name_is_replaced_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "status.json").symlink_to(target)
    run_files.write_atomically(str(tmp_path / "status.json"), '{"state": "succeeded"}')
    assert target.read_text() == "keep"
    assert not (tmp_path / "status.json").is_symlink()
