"""evalkit's scripts folder on the server is checked once and used only through what was checked
(remote/bootstrap.py): whoever can write its parent may swap the folder for a symlink to a folder
of their own right after the check, and the swap changes nothing that evalkit reads, writes or runs."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from evalkit.remote import bootstrap

SCRIPT = "import sys; open(sys.argv[1], 'w').write('{who}')\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """Evalkit's folder (its script there, current) and an attacker's folder beside it."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    folder, theirs = tmp_path / "outputs" / ".evalkit", tmp_path / "theirs"
    folder.parent.mkdir()
    folder.mkdir(mode=0o700)
    theirs.mkdir()
    (folder / "hello.py").write_text(SCRIPT.format(who="evalkit"))
    (theirs / "hello.py").write_text(SCRIPT.format(who="theirs"))
    return folder, theirs


def _swapped_right_after_the_check(monkeypatch, folder: Path, theirs: Path) -> None:
    checked = bootstrap.refusal

    def check_then_swap(name, folder_fd):
        found = checked(name, folder_fd)
        folder.rename(folder.parent / "moved-away")
        folder.symlink_to(theirs)  # FOLDER's name now leads to their folder
        return found

    monkeypatch.setattr(bootstrap, "refusal", check_then_swap)


def test_a_folder_swapped_after_the_check_runs_and_receives_nothing_of_theirs(scene, monkeypatch, tmp_path):
    folder, theirs = scene
    _swapped_right_after_the_check(monkeypatch, folder, theirs)
    new = "print('new')\n"
    requests = iter([{"files": {"hello.py": _digest(SCRIPT.format(who="evalkit")), "new.py": _digest(new)}},
                     {"files": {"new.py": new}}])
    monkeypatch.setattr(bootstrap, "read_request", lambda: next(requests))
    ran = tmp_path / "ran"
    bootstrap.main(str(folder), "hello.py", [str(ran)])
    assert ran.read_text() == "evalkit"  # what was checked ran, not what the name leads to now
    assert (tmp_path / "outputs" / "moved-away" / "new.py").read_text() == new
    assert sorted(path.name for path in theirs.iterdir()) == ["hello.py"]  # nothing written through the swap


def test_a_slurm_jobs_start_swapped_after_the_check_runs_what_was_checked(scene, monkeypatch, tmp_path):
    folder, theirs = scene
    _swapped_right_after_the_check(monkeypatch, folder, theirs)
    ran = tmp_path / "ran"
    bootstrap.run_expected({"hello.py": _digest(SCRIPT.format(who="evalkit"))}, str(tmp_path / "status.json"),
                           str(folder), "hello.py", [str(ran)])
    assert ran.read_text() == "evalkit"


@pytest.mark.parametrize("tamper, says", [
    (lambda folder, theirs: (folder / "hello.py").write_text("print('edited')\n"),
     "evalkit will not run hello.py in {folder}: changed since this Slurm job was submitted"),
    (lambda folder, theirs: (folder.rename(folder.parent / "old"), folder.symlink_to(theirs)),
     "evalkit will not run its scripts from {folder}: it is a symlink or not a folder"),
    (lambda folder, theirs: folder.chmod(0o777),
     "evalkit will not run its scripts from {folder}: other users can write to it (mode 777)"),
])
def test_a_slurm_jobs_start_refuses_a_changed_script_or_folder_and_says_so_in_the_runs_status(
        scene, tmp_path, capsys, tamper, says):
    folder, theirs = scene
    tamper(folder, theirs)
    status, ran = tmp_path / "status.json", tmp_path / "ran"
    with pytest.raises(SystemExit) as exited:
        bootstrap.run_expected({"hello.py": _digest(SCRIPT.format(who="evalkit"))}, str(status), str(folder),
                               "hello.py", [str(ran)])
    assert exited.value.code == 1 and not ran.exists()
    refused = json.loads(status.read_text())
    assert refused["state"] == "unsafe" and refused["error"].startswith(says.format(folder=folder))
    assert refused["fix"] and f"fix: {refused['fix']}" in capsys.readouterr().err
    os.chmod(folder, 0o700) if not folder.is_symlink() else None
