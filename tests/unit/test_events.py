"""The run's event stream: what remote/run_events.py pushes (for job.py start and events) as it
reads a run's files on the server (scan, send_event), and what the laptop makes of it (events.py):
every byte once, in order, from wherever the laptop resumes; lines cut anywhere; nothing from a
cut line."""
import base64
import io
import json
import os
import sys
import time

import pytest

from evalkit.events import (Beat, Bundle, Lines, Output, Position, RunEnded, StepEnded, StepStarted, StreamBroken,
                            Wrote, collect_request, decode, write_request)
from evalkit.remote import run_events, run_processes


def a_run(folder, steps=2):
    (folder / "run.json").write_text(json.dumps({"steps": [{"command": "true"}] * steps}))
    return folder


def step_files(folder, index, out=b"", err=b"", exit_code=None, seconds="1.250"):
    (folder / f"step-{index}.started").write_text("now")
    (folder / f"step-{index}.out").write_bytes(out)
    (folder / f"step-{index}.err").write_bytes(err)
    if exit_code is not None:
        (folder / f"step-{index}.exit").write_text(f"{exit_code}\n{seconds}\n")


def lines_of(found, monkeypatch):
    """The wire's bytes for FOUND, as run_events.py's send_event writes them."""
    written = io.StringIO()
    monkeypatch.setattr(sys, "stdout", written)
    for event in found:
        run_events.send_event(event)
    return written.getvalue().encode()


def received(wire, position=None, piece=1):
    """What the laptop takes from WIRE's bytes, fed PIECE bytes at a time (lines cut everywhere)."""
    lines, position, taken = Lines(), position or Position(), []
    for start in range(0, len(wire), piece):
        for line in lines.feed(wire[start:start + piece]):
            event = decode(line)
            event = position.accept(event) if event is not None else None
            if event is not None:
                taken.append(event)
    return taken


def test_a_run_read_on_the_server_reaches_the_laptop_as_its_steps_output_and_end(tmp_path, monkeypatch):
    folder = a_run(tmp_path)
    step_files(folder, 0, out="第一 line\n".encode(), err=b"\xff not utf-8\n", exit_code=0)
    step_files(folder, 1, out=b"partial", exit_code=None)
    found = run_events.scan(str(folder), run_events.Position(), steps=2)
    assert received(lines_of(found, monkeypatch)) == [
        StepStarted(0), Output(0, "stdout", 0, "第一 line\n".encode()), Output(0, "stderr", 0, b"\xff not utf-8\n"),
        StepEnded(0, 0, 1.25), StepStarted(1), Output(1, "stdout", 0, b"partial")]


def test_the_server_sends_only_what_is_new_and_the_runs_end_once(tmp_path):
    folder, position = a_run(tmp_path, steps=1), run_events.Position()
    step_files(folder, 0, out=b"one\n")
    assert [e["e"] for e in run_events.scan(str(folder), position, steps=1)] == ["started", "output"]
    assert run_events.scan(str(folder), position, steps=1) == []
    with open(folder / "step-0.out", "ab") as out:
        out.write(b"two\n")
    (folder / "step-0.exit").write_text("3\n0.5\n")
    (folder / "status.json").write_text(json.dumps({"state": "failed", "failed_step": 0}))
    assert [(e["e"], e.get("at"), e.get("code")) for e in run_events.scan(str(folder), position, steps=1)] == [
        ("output", 4, None), ("ended", None, 3), ("end", None, None)]
    assert run_events.scan(str(folder), position, steps=1) == []


def test_a_run_cancelled_mid_step_ends_the_stream_after_the_steps_last_output(tmp_path):
    folder = a_run(tmp_path)
    step_files(folder, 0, out=b"half")
    (folder / "status.json").write_text(json.dumps({"state": "cancelled"}))
    assert [e["e"] for e in run_events.scan(str(folder), run_events.Position(), steps=2)] == ["started", "output", "end"]


def test_a_big_output_travels_in_chunks_and_arrives_whole(tmp_path, monkeypatch):
    folder = a_run(tmp_path, steps=1)
    data = bytes(range(256)) * 1000  # 256 kB: four chunks
    step_files(folder, 0, out=data, exit_code=0)
    found = run_events.scan(str(folder), run_events.Position(), steps=1)
    assert sum(e["e"] == "output" for e in found) == 4
    events = [e for e in received(lines_of(found, monkeypatch), piece=4093) if isinstance(e, Output)]
    assert b"".join(e.data for e in events) == data


def test_a_stream_resumed_from_the_laptops_position_shows_nothing_twice_and_loses_nothing(tmp_path, monkeypatch):
    folder = a_run(tmp_path)
    step_files(folder, 0, out=b"a\nb\n", exit_code=0)
    step_files(folder, 1, out=b"0123456789", err=b"e")
    laptop = Position()
    first = received(lines_of(run_events.scan(str(folder), run_events.Position(), steps=2), monkeypatch), laptop)
    assert laptop.as_argument() == "1,10,1" and first[-1] == Output(1, "stderr", 0, b"e")
    with open(folder / "step-1.out", "ab") as out:
        out.write(b"more")
    # the server starts again from an older position than the laptop's (say, the starter's last)
    again = received(lines_of(run_events.scan(str(folder), run_events.Position(1, 4, 0), steps=2), monkeypatch), laptop)
    assert again == [Output(1, "stdout", 10, b"more")]
    # and from the laptop's own, as `job.py events --from` is given it
    resumed = run_events.Position(*(int(part) for part in laptop.as_argument().split(",")))
    (folder / "step-1.exit").write_text("0\n2.0\n")
    assert received(lines_of(run_events.scan(str(folder), resumed, steps=2), monkeypatch), laptop) == [StepEnded(1, 0, 2.0)]
    assert laptop.as_argument() == "2,0,0"


def test_a_gap_in_a_streams_bytes_breaks_the_stream_rather_than_show_it():
    with pytest.raises(StreamBroken, match="skipped bytes 0 to 5"):
        Position(started=True).accept(Output(0, "stdout", 5, b"late"))


def test_a_line_cut_between_reads_waits_for_its_end_and_a_cut_stream_drops_it():
    lines = Lines()
    assert lines.feed(b'EVALKIT-EVENT {"e": "be') == []
    assert lines.feed(b'at", "alive": true}\nchat') == [b'EVALKIT-EVENT {"e": "beat", "alive": true}']
    lines.drop()
    assert lines.feed(b"ter\n") == [b"ter"]


@pytest.mark.parametrize("line, event", [
    (b"conda: activating env", None),                       # a login shell's chatter
    (b'EVALKIT-EVENT {"e": "beat", "alive": false}', Beat(False)),
    (b'EVALKIT-EVENT {"e": "end", "status": {"state": "succeeded"}}', RunEnded({"state": "succeeded"})),
    (b'EVALKIT-EVENT {"e": "wrote", "path": "/m.json", "error": "No space left on device", "errno": 28}',
     Wrote("/m.json", "No space left on device", 28)),
    (b'EVALKIT-EVENT {"e": "bundle", "files": {"/a": {"mtime": 7, "b64": "eA=="}, "/b": null}}',
     Bundle({"/a": (7, b"x"), "/b": None})),
    (b'EVALKIT-EVENT {"e": "something newer"}', None),      # a newer server's: nothing to do here
])
def test_each_line_decodes_to_its_event(line, event):
    assert decode(line) == event


@pytest.mark.parametrize("line", [
    b'EVALKIT-EVENT {"e": "output", "step": 0, "stream": "stdout", "at": 0, "b64": "eA',   # cut mid-line
    b'EVALKIT-EVENT {"e": "output", "step": 0, "stream": "stdin", "at": 0, "b64": ""}',
    b'EVALKIT-EVENT {"e": "ended"}',
    b"EVALKIT-EVENT not json",
])
def test_a_truncated_or_malformed_event_line_breaks_the_stream(line):
    with pytest.raises(StreamBroken):
        decode(line)


def test_the_servers_answers_to_a_write_and_a_collect(tmp_path):
    manifest = tmp_path / "new folder" / "manifest.json"
    request = json.loads(write_request(str(manifest), '{"ok": "是"}'.encode()))
    assert run_events.serve(request) == {"e": "wrote", "path": str(manifest)}
    assert manifest.read_text(encoding="utf-8") == '{"ok": "是"}' and manifest.stat().st_mode & 0o044
    bundle = run_events.serve(json.loads(collect_request([str(manifest), str(tmp_path / "missing")])))
    assert base64.b64decode(bundle["files"][str(manifest)]["b64"]) == '{"ok": "是"}'.encode()
    assert bundle["files"][str(tmp_path / "missing")] is None
    blocked = tmp_path / "a file" / "manifest.json"
    (tmp_path / "a file").write_text("in the way")
    refused = run_events.serve(json.loads(write_request(str(blocked), b"{}")))
    assert refused["e"] == "wrote" and refused["error"] and refused["errno"]


def test_the_heartbeat_takes_a_driver_that_exited_unreaped_for_gone():
    # the starter, still streaming, is the driver's parent: a killed driver stays a zombie until reaped
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline, fields = time.monotonic() + 10, [b"R"]
        while fields[0] != b"Z" and time.monotonic() < deadline:
            with open(f"/proc/{child}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        assert fields[0] == b"Z"
        record = {"pid": child, "start_time": int(fields[19]), "boot_id": run_processes.boot_id()}
        assert not run_processes.is_alive(record)
    finally:
        assert run_events.has_exited(child) and run_events.has_exited(child)  # reaped once, and asking again is fine
