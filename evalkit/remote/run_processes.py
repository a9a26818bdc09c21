"""A process's identity on this machine (its pid, start time and boot) and the processes of one
run (standard library only; imported by job.py and the modules beside it).

The driver is exec'd with RUN_ID_VARIABLE in its environment, which its steps inherit, so that
cancel finds every process of this run in /proc (and only those, even when a recorded pid has
been reused).
"""
import os

RUN_ID_VARIABLE = "EVALKIT_RUN_ID"


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def start_time(pid):
    """The process's start time in clock ticks since boot: with the pid, its identity. None when
    it is gone, a zombie too (it exited; its parent, the starter still streaming, has not reaped it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19]) if fields[0] != b"Z" else None
    except (OSError, IndexError, ValueError):
        return None


def identity(pid):
    return {"pid": pid, "start_time": start_time(pid), "boot_id": boot_id()}


def is_alive(record):
    """Is the process RECORD describes still running (same boot, same pid, same start time)?"""
    if not record or record.get("boot_id") != boot_id():
        return False
    return record.get("start_time") is not None and start_time(record["pid"]) == record["start_time"]


def processes_of(run_id):
    """Every live process whose environment carries this run's id (the driver's descendants)."""
    wanted = f"{RUN_ID_VARIABLE}={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if wanted in handle.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found
