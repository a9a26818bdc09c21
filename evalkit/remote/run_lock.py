"""The checkpoint directory's lock (standard library only; imported by job.py beside it).

A lock file in the checkpoint's output directory keeps two runs, on any of a cluster's nodes, from
writing it at once: a lease whose heartbeat the driver refreshes, taken over once its driver is
gone (this machine) or its heartbeat stopped (another machine).

One run per checkpoint directory, across the cluster's nodes. flock is not enough there: Lustre
mounted without `flock`, or NFS with `local_lock=flock`, grants it on every node at once. The
lock is a lease instead: a file made with link() (atomic on NFS and Lustre too: it fails on an
existing name), holding its holder's record, whose heartbeat the driver refreshes every
HEARTBEAT_SECONDS. A holder on this machine (same host, same boot) is alive while its process
is; one on another machine while its heartbeat is fresher than LEASE_SECONDS: another node's
pids mean nothing in this node's /proc.
"""
import json
import os
import secrets
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the modules beside it, however it was started
from run_files import now, remove  # noqa: E402  (evalkit uploads them with job.py)
from run_processes import boot_id, identity, is_alive  # noqa: E402

HEARTBEAT_SECONDS = 5
LEASE_SECONDS = 60  # twelve missed heartbeats; clocks of one cluster agree far better than that
RECORD_BYTES = 1024  # the record, padded: each heartbeat rewrites it in place, same length
WRITING_GRACE = 2  # seconds a record that cannot be read yet is waited for


def host_name():
    return os.uname().nodename


def lease_decision(holder, here, now, alive_here):
    """Whether the lock's HOLDER (its record) still holds it, and why: ("alive" or "stale", reason).
    HERE: {"host", "boot_id"} of this machine; NOW: this machine's clock (time.time());
    ALIVE_HERE(record): whether the record's process runs on this machine (local /proc)."""
    same_machine = holder.get("boot_id") == here["boot_id"] and holder.get("host", here["host"]) == here["host"]
    if same_machine:
        return ("alive", "its driver runs on this machine") if alive_here(holder) else \
            ("stale", "its driver on this machine is gone")
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)):  # an evalkit from before the lease, on another machine or boot
        return "stale", "its driver ran on another machine or before a reboot, and keeps no heartbeat"
    if now - beat < LEASE_SECONDS:
        return "alive", f"its heartbeat from {holder.get('host')} is {max(0, round(now - beat))} s old"
    return "stale", f"its heartbeat from {holder.get('host')} stopped {round(now - beat)} s ago"


def this_machine():
    return {"host": host_name(), "boot_id": boot_id()}


def holds(holder, opened):
    """Does the lock's record HOLDER (None: not readable yet) still hold it? OPENED: the lock
    file's fstat, whose age judges a record that is being written or was damaged."""
    if holder is None:
        return time.time() - opened.st_mtime < WRITING_GRACE
    return lease_decision(holder, this_machine(), time.time(), is_alive)[0] == "alive"


class Lease:
    """The lock file at PATH, held: its record's heartbeat refreshed by a thread until release."""

    def __init__(self, path, handle, record):
        self.path, self.handle, self.record = path, handle, record
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _beat(self):
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            if not is_file_at(self.handle, self.path):  # removed or replaced: it is not ours any more
                print(f"evalkit: the lock {self.path} is no longer this run's", file=sys.stderr, flush=True)
                return
            self.record["heartbeat"] = time.time()
            try:
                write_record(self.handle, self.record)
            except OSError as exc:  # a full disk, a hung mount: the next beat tries again
                print(f"evalkit: the lock's heartbeat failed: {exc}", file=sys.stderr, flush=True)

    def release(self):
        """Remove the lock file, if it is still this run's."""
        self.stopped.set()
        self.thread.join()
        if is_file_at(self.handle, self.path):
            remove(self.path)
        os.close(self.handle)


def padded(record):
    return json.dumps(record).encode().ljust(RECORD_BYTES)


def write_record(handle, record):
    """RECORD over the file's first RECORD_BYTES, in place; fsynced: another node reads it from
    the server, not from this node's cache."""
    os.pwrite(handle, padded(record), 0)
    os.fsync(handle)


def acquire_lock(path, run_id):
    """Take the lock at PATH for RUN_ID: (its Lease, to hold until release_lock, or None; the
    holder's record when refused; whether it replaced a dead holder's record)."""
    deadline = time.monotonic() + WRITING_GRACE
    while True:
        mine = dict(identity(os.getpid()), host=host_name(), run_id=run_id, taken_at=now(), heartbeat=time.time())
        handle = create_exclusively(path, padded(mine))
        if handle is not None:
            return Lease(path, handle, mine), None, False
        holder, opened = read_lock(path)
        if opened is None:
            continue  # released between our link and our look: try again
        if holds(holder, opened):
            if holder is not None or time.monotonic() > deadline:
                return None, holder, False
            time.sleep(0.01)  # made a moment ago: its record is about to be readable
            continue
        handle = with_takeover_guard(path, opened, lambda: replace_with(path, padded(mine)))
        if handle is not None:
            return Lease(path, handle, mine), None, True


def new_file_beside(path, data):
    """A new file beside PATH holding DATA, fsynced: (its name, its descriptor)."""
    temporary = f"{path}.new-{secrets.token_hex(8)}"
    handle = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(handle, data)
        os.fsync(handle)
    except BaseException:
        os.close(handle)
        remove(temporary)
        raise
    return temporary, handle


def create_exclusively(path, data):
    """A new file at PATH with DATA, made whole beside it and linked into place (link() fails on
    an existing name, on NFS and Lustre too): its descriptor, or None when PATH exists."""
    temporary, handle = new_file_beside(path, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        os.close(handle)
        return None
    except BaseException:
        os.close(handle)
        raise
    finally:
        remove(temporary)
    return handle


def replace_with(path, data):
    """PATH replaced by a new file with DATA, never absent meanwhile (rename): its descriptor."""
    temporary, handle = new_file_beside(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.close(handle)
        remove(temporary)
        raise
    return handle


def read_lock(path):
    """(the record, or None when it cannot be read; the file's fstat, or None when there is none)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, None
    try:
        return read_record(handle), os.fstat(handle)
    finally:
        os.close(handle)


def with_takeover_guard(path, judged, action):
    """ACTION() on the lock file JUDGED (its fstat) stale, unless it was replaced meanwhile:
    its result, else None. The takers of one stale lock act one at a time (the takeover's own
    lock, PATH.takeover), so none of them replaces the fresh lock another one made meanwhile."""
    guard = f"{path}.takeover"
    handle = create_exclusively(guard, padded(dict(identity(os.getpid()), host=host_name(), heartbeat=time.time())))
    if handle is None:
        holder, opened = read_lock(guard)
        if opened is not None and not (holds(holder, opened) if holder is None else holds_takeover(holder)):
            remove(guard)  # its taker died in the middle (a takeover takes milliseconds)
        time.sleep(0.01)
        return None
    try:
        try:
            there = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if (there.st_dev, there.st_ino) != (judged.st_dev, judged.st_ino):
            return None  # another taker was first: the lock there now is judged anew
        return action()
    finally:
        remove(guard)
        os.close(handle)


def holds_takeover(holder):
    """A takeover's own lock lives while its taker does, a lease at most (it takes milliseconds)."""
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or time.time() - beat > LEASE_SECONDS:
        return False
    return lease_decision(holder, this_machine(), time.time(), is_alive)[0] == "alive"


def release_lock(lease, path):
    lease.release()


def release_dead_lock(path, run_id):
    """Remove RUN_ID's lock at PATH once its driver is gone (cancel)."""
    holder, opened = read_lock(path)
    if opened is not None and (holder or {}).get("run_id") == run_id:
        with_takeover_guard(path, opened, lambda: remove(path))


def read_record(handle):
    try:
        record = json.loads(os.pread(handle, 65536, 0))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record else None


def is_file_at(handle, path):
    try:
        there = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    opened = os.fstat(handle)
    return (there.st_dev, there.st_ino) == (opened.st_dev, opened.st_ino)
