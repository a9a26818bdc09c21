"""The checkpoint's lock is a lease (remote/run_lock.py): who still holds it, decided from its record.
A holder on this machine is judged by this machine's /proc; one on another machine (or from
before this machine's reboot) only by its heartbeat, never by a local pid that means nothing."""
from __future__ import annotations

import json
import time

import pytest

from evalkit.remote import run_lock

HERE = {"host": "node-a", "boot_id": "boot-a"}
NOW = 1_000_000.0
FRESH, STALE = NOW - 10, NOW - run_lock.LEASE_SECONDS - 1


def record(host="node-a", boot_id="boot-a", heartbeat=FRESH, **more):
    return dict({"host": host, "boot_id": boot_id, "heartbeat": heartbeat, "pid": 4242, "start_time": 7}, **more)


@pytest.mark.parametrize("holder, alive_here, decided", [
    # this machine: its process alone decides, whatever its heartbeat says
    (record(), True, "alive"),
    (record(), False, "stale"),
    (record(heartbeat=STALE), True, "alive"),
    (record(heartbeat=FRESH), False, "stale"),
    # another machine: its heartbeat alone decides, whatever this machine's /proc says
    (record(host="node-b", boot_id="boot-b"), False, "alive"),
    (record(host="node-b", boot_id="boot-b", heartbeat=STALE), True, "stale"),
    (record(host="node-b", boot_id="boot-b", heartbeat=NOW + 30), False, "alive"),  # its clock a little ahead
    # this host before a reboot: its pid means nothing now; its heartbeat stopped at the reboot
    (record(boot_id="boot-before"), True, "alive"),
    (record(boot_id="boot-before", heartbeat=STALE), True, "stale"),
    # another container on this kernel (same boot id, another host name, its own pids)
    (record(host="container-2"), False, "alive"),
    (record(host="container-2", heartbeat=STALE), True, "stale"),
    # an evalkit from before the lease: no host, no heartbeat
    ({"boot_id": "boot-a", "pid": 4242, "start_time": 7}, True, "alive"),
    ({"boot_id": "boot-a", "pid": 4242, "start_time": 7}, False, "stale"),
    ({"boot_id": "boot-b", "pid": 4242, "start_time": 7}, True, "stale"),
])
def test_who_still_holds_the_lock(holder, alive_here, decided):
    asked = []

    def local_process_alive(seen):
        asked.append(seen)
        return alive_here

    verdict, reason = run_lock.lease_decision(holder, HERE, NOW, local_process_alive)
    assert verdict == decided, reason
    same_machine = holder["boot_id"] == HERE["boot_id"] and holder.get("host", "node-a") == HERE["host"]
    assert bool(asked) == same_machine  # another machine's holder is never looked for in this /proc


def test_the_heartbeat_is_refreshed_well_within_the_lease():
    assert run_lock.HEARTBEAT_SECONDS * 6 <= run_lock.LEASE_SECONDS


def test_a_lease_held_here_beats_and_is_given_back(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.01)
    lock = tmp_path / ".evalkit-lock"
    lease, holder, took_over = run_lock.acquire_lock(str(lock), "run-1")
    assert holder is None and took_over is False
    first = run_lock.read_lock(str(lock))[0]["heartbeat"]
    deadline = time.monotonic() + 5
    while run_lock.read_lock(str(lock))[0]["heartbeat"] == first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run_lock.read_lock(str(lock))[0]["heartbeat"] > first
    assert run_lock.read_lock(str(lock))[0]["host"] == run_lock.host_name()
    second, holder, _ = run_lock.acquire_lock(str(lock), "run-2")
    assert second is None and holder["run_id"] == "run-1"
    run_lock.release_lock(lease, str(lock))
    assert list(tmp_path.iterdir()) == []


def test_another_hosts_lease_is_kept_while_fresh_and_taken_over_once_stale(tmp_path):
    lock = tmp_path / ".evalkit-lock"
    lock.write_text(json.dumps(record(host="node-b", boot_id="boot-b", heartbeat=time.time(), run_id="there")))
    lease, holder, _ = run_lock.acquire_lock(str(lock), "here")
    assert lease is None and holder["run_id"] == "there"
    lock.write_text(json.dumps(record(host="node-b", boot_id="boot-b", heartbeat=time.time() - 3600,
                                      run_id="there")))
    lease, holder, took_over = run_lock.acquire_lock(str(lock), "here")
    assert holder is None and took_over is True
    assert run_lock.read_lock(str(lock))[0]["run_id"] == "here"
    run_lock.release_lock(lease, str(lock))
    assert list(tmp_path.iterdir()) == []
