"""The server's checkpoint lister (evalkit/remote/list_checkpoints.py), run as the server runs it:
`python -c SOURCE CACHE_FILE FILES_JSON PATTERN ...` on real files."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evalkit.progress import last_marked_json
from evalkit.uploads import script_source

MIB = 1 << 20


def run_lister(*patterns: Path | str, cache: Path | str = "", files: tuple[str, ...] = ()) -> dict:
    source = script_source("list_checkpoints.py").decode()
    ran = subprocess.run([sys.executable, "-c", source, str(cache), json.dumps(files), *map(str, patterns)],
                         capture_output=True, check=True)
    return last_marked_json(ran.stdout, b"EVALKIT-CHECKPOINTS ")


def by_name(listed: dict) -> dict[str, dict]:
    return {Path(entry["path"]).name: entry for entry in listed["files"]}


def write_alike(path: Path, differing_at: int, byte: int, mtime_ns: int = 10**18) -> Path:
    """4 MiB of one architecture's size, differing only at DIFFERING_AT (outside the sampled
    first, middle and last MiB when it is 1.2 MiB), with the same mtime."""
    data = bytearray(b"\x07" * (4 * MIB))
    data[differing_at] = byte
    path.write_bytes(bytes(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def torch_like_zip(path: Path, saved: object) -> Path:
    """An archive laid out as torch.save lays it out: its folder named after the file, and an id
    that differs per save."""
    top = path.stem
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", pickle.dumps(saved, protocol=2))
        archive.writestr(f"{top}/byteorder", "little")
        archive.writestr(f"{top}/data/0", b"\x00" * 64)
        archive.writestr(f"{top}/version", "3\n")
        archive.writestr(f"{top}/.data/serialization_id", os.urandom(20).hex())  # other per save
    return path


def test_files_of_one_size_and_mtime_with_equal_sampled_mib_are_told_apart_by_full_digests(tmp_path):
    write_alike(tmp_path / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(tmp_path / "epoch2.pt", int(1.2 * MIB), 2)  # another epoch: one byte differs
    write_alike(tmp_path / "copy_of_1.pt", int(1.2 * MIB), 1)
    files = by_name(run_lister(tmp_path)["sets"][0])
    assert None not in {entry["sha256"] for entry in files.values()}
    assert files["epoch1.pt"]["sha256"] != files["epoch2.pt"]["sha256"]
    assert files["epoch1.pt"]["sha256"] == files["copy_of_1.pt"]["sha256"]


def test_files_told_apart_by_their_sampled_mib_are_not_hashed_in_full(tmp_path):
    write_alike(tmp_path / "epoch1.pt", 0, 1)
    write_alike(tmp_path / "epoch2.pt", 0, 2)
    files = by_name(run_lister(tmp_path)["sets"][0])
    assert [entry["sha256"] for entry in files.values()] == [None, None]


def test_a_hard_link_is_proof_enough_so_neither_name_is_hashed(tmp_path):
    cache = tmp_path / "cache.json"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    write_alike(folder / "epoch3.pt", 0, 3)
    os.link(folder / "epoch3.pt", folder / "epoch_latest.pt")
    files = by_name(run_lister(folder, cache=cache)["sets"][0])
    assert files["epoch3.pt"]["inode"] == files["epoch_latest.pt"]["inode"]
    assert files["epoch3.pt"]["sha256"] is files["epoch_latest.pt"]["sha256"] is None
    # nothing was learned by reading the file: not even its sampled MiB
    assert not cache.exists()


def test_a_name_that_is_not_utf8_is_skipped_with_a_note_and_the_others_listed(tmp_path):
    folder = tmp_path / "检查点"
    folder.mkdir()
    (folder / "epoch1.pt").write_bytes(b"one")
    with open(os.fsencode(folder) + b"/epoch\xff.pt", "wb") as handle:
        handle.write(b"two")
    for pattern in (folder, folder / "epoch*.pt"):
        listed = run_lister(pattern)["sets"][0]
        assert [Path(entry["path"]).name for entry in listed["files"]] == ["epoch1.pt"]
        assert listed["skipped"] == [{"path": f"{folder}/epoch\\xff.pt", "why": "its name is not UTF-8"}]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_that_cannot_be_read_is_skipped_with_why_and_the_others_listed(tmp_path):
    write_alike(tmp_path / "epoch1.pt", 0, 1)
    write_alike(tmp_path / "epoch2.pt", 0, 2).chmod(0)
    listed = run_lister(tmp_path)["sets"][0]
    assert [Path(entry["path"]).name for entry in listed["files"]] == ["epoch1.pt"]
    assert listed["skipped"] == [{"path": str(tmp_path / "epoch2.pt"),
                                  "why": "it cannot be read (Permission denied)"}]


@pytest.mark.parametrize("literal, sibling, kind", [("run[1]", "run1", "directory"),
                                                    ("epoch[1].pt", "epoch1.pt", "file"),
                                                    ("epoch*.pt", "epoch2.pt", "file")])
def test_a_pattern_that_names_an_existing_file_or_folder_is_that_not_a_glob(tmp_path, literal, sibling, kind):
    for name in (literal, sibling):
        if kind == "directory":
            (tmp_path / name).mkdir()
            (tmp_path / name / f"from_{name}.pt").write_bytes(b"x")
        else:
            (tmp_path / name).write_bytes(b"x")
    listed = run_lister(tmp_path / literal)["sets"][0]
    assert (listed["kind"], listed["searched"]) == (kind, str(tmp_path / literal))
    wanted = tmp_path / literal / f"from_{literal}.pt" if kind == "directory" else tmp_path / literal
    assert [entry["path"] for entry in listed["files"]] == [str(wanted)]


def test_a_pattern_that_names_nothing_is_a_glob(tmp_path):
    (tmp_path / "epoch1.pt").write_bytes(b"x")
    listed = run_lister(tmp_path / "epoch[12].pt")["sets"][0]
    assert listed["kind"] == "glob" and [Path(e["path"]).name for e in listed["files"]] == ["epoch1.pt"]


def test_an_unchanged_file_is_not_read_again_and_a_changed_one_is(tmp_path):
    cache = tmp_path / "cache.json"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    write_alike(folder / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(folder / "epoch2.pt", int(1.2 * MIB), 2)
    first = by_name(run_lister(folder, cache=cache)["sets"][0])
    assert [entry["cached"] for entry in first.values()] == [False, False]
    again = by_name(run_lister(folder, cache=cache)["sets"][0])
    assert [entry["cached"] for entry in again.values()] == [True, True]
    assert again == {name: dict(entry, cached=True) for name, entry in first.items()}
    os.utime(folder / "epoch2.pt", ns=(2 * 10**18, 2 * 10**18))
    changed = by_name(run_lister(folder, cache=cache)["sets"][0])
    assert (changed["epoch1.pt"]["cached"], changed["epoch2.pt"]["cached"]) == (True, False)
    assert changed["epoch2.pt"]["sha256"] == first["epoch2.pt"]["sha256"]  # recomputed: same bytes


def test_a_file_rewritten_in_place_with_its_size_and_mtime_kept_is_read_again(tmp_path):
    cache = tmp_path / "cache.json"
    write_alike(tmp_path / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(tmp_path / "epoch_latest.pt", int(1.2 * MIB), 1)
    before = by_name(run_lister(tmp_path, cache=cache)["sets"][0])
    # as cp -p epoch2.pt epoch_latest.pt does: the same inode, size and mtime, other bytes
    write_alike(tmp_path / "epoch_latest.pt", int(1.2 * MIB), 2)
    after = by_name(run_lister(tmp_path, cache=cache)["sets"][0])
    assert after["epoch_latest.pt"]["inode"] == before["epoch_latest.pt"]["inode"]
    assert after["epoch_latest.pt"]["mtime_ns"] == before["epoch_latest.pt"]["mtime_ns"]
    assert after["epoch_latest.pt"]["sha256"] != after["epoch1.pt"]["sha256"]


@pytest.mark.parametrize("stored", [b"{not json", b"[1, 2]", b'{"version": 1, "facts": {"1:2:3:4:5": 7}}',
                                    b"[" * 100000, b"\xff\xfe"])
def test_a_damaged_cache_is_ignored_and_replaced(tmp_path, stored):
    cache = tmp_path / "cache.json"
    cache.write_bytes(stored)
    write_alike(tmp_path / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(tmp_path / "epoch2.pt", int(1.2 * MIB), 2)
    first = by_name(run_lister(tmp_path, cache=cache)["sets"][0])
    assert first["epoch1.pt"]["sha256"] != first["epoch2.pt"]["sha256"]
    assert [entry["cached"] for entry in by_name(run_lister(tmp_path, cache=cache)["sets"][0]).values()] == [True, True]


def test_a_cache_in_a_missing_folder_is_not_made_and_the_listing_still_works(tmp_path):
    write_alike(tmp_path / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(tmp_path / "epoch2.pt", int(1.2 * MIB), 2)
    files = by_name(run_lister(tmp_path, cache=tmp_path / "no such folder" / "cache.json")["sets"][0])
    assert None not in {entry["sha256"] for entry in files.values()}
    assert not (tmp_path / "no such folder").exists()


def test_the_cache_keeps_this_looks_files_first_and_at_most_2000(tmp_path):
    cache = tmp_path / "cache.json"
    earlier = {f"1:{n}:2:3:4": {"sample": "0" * 64} for n in range(2500)}
    cache.write_text(json.dumps({"version": 1, "facts": earlier}))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    write_alike(folder / "epoch1.pt", int(1.2 * MIB), 1)
    write_alike(folder / "epoch2.pt", int(1.2 * MIB), 2)
    run_lister(folder, cache=cache)
    kept = json.loads(cache.read_text())["facts"]
    assert len(kept) == 2000
    identities = {f"{os.stat(p).st_dev}:{os.stat(p).st_ino}" for p in folder.iterdir()}
    assert {":".join(key.split(":")[:2]) for key in list(kept)[:2]} == identities


def test_epoch_and_step_are_read_without_running_code_from_the_file(tmp_path):
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch_like_zip(tmp_path / "epoch5.pt", {"epoch": 5, "step": 40, "name": "t", "state_dict": Planted()})
    torch_like_zip(tmp_path / "epoch6.pt", {"epoch": "6", "step": 48})  # not an int: not trusted
    torch_like_zip(tmp_path / "epoch7.pt", [7, 56])
    (tmp_path / "epoch8.pt").write_bytes(b"PK\x03\x04 half written")
    files = by_name(run_lister(tmp_path)["sets"][0])
    assert not marker.exists()
    assert [(e["zip"], e["epoch"], e["step"]) for e in files.values()] == [
        (True, 5, 40), (True, None, None), (True, None, None), (False, None, None)]


def test_two_saves_of_one_state_share_a_state_digest_whatever_their_file_names(tmp_path):
    saved = {"epoch": 3, "step": 30, "name": "t", "state_dict": {"module.w": b"weights"}}
    torch_like_zip(tmp_path / "epoch3.pt", saved)
    torch_like_zip(tmp_path / "epoch_latest.pt", saved)
    torch_like_zip(tmp_path / "rerun_epoch3.pt", dict(saved, state_dict={"module.w": b"other"}))
    torch_like_zip(tmp_path / "epoch2.pt", dict(saved, epoch=2, step=20))
    files = by_name(run_lister(tmp_path)["sets"][0])
    assert files["epoch3.pt"]["state"] == files["epoch_latest.pt"]["state"] is not None
    assert files["epoch2.pt"]["state"] is None  # another epoch: no proof needed
    assert files["rerun_epoch3.pt"]["state"] is None  # its records' CRC-32s differ: another state, unread


def test_experiments_saved_at_one_epoch_and_step_are_told_apart_without_reading_their_weights(tmp_path):
    """TEAM, Large and Huge compared at epoch 5: one epoch and step, other weights. The zip
    directory's CRC-32s tell them apart; no multi-GB file is read in full."""
    for name, weights in (("team", b"t" * 64), ("large", b"l" * 64), ("huge", b"h" * 64)):
        folder = tmp_path / name / "checkpoints"
        folder.mkdir(parents=True)
        torch_like_zip(folder / "epoch5.pt", {"epoch": 5, "step": 500, "name": name, "state_dict": {}})
        with zipfile.ZipFile(folder / "epoch5.pt", "a") as archive:
            archive.writestr("epoch5/data/1", weights)
    listed = run_lister(tmp_path / "*" / "checkpoints" / "epoch5.pt")["sets"][0]["files"]
    assert [entry["epoch"] for entry in listed] == [5, 5, 5]
    assert [(entry["state"], entry["sha256"]) for entry in listed] == [(None, None)] * 3
