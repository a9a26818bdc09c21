"""Run an evaluation's steps on the server, detached from the SSH session that started them.

Usage (on the server; standard library only):
  python job.py start  < JSON lines   evalkit's checks, then write DIR/run.json and start the driver
                                      in the background; print whether it runs, then a line each
                                      time the run moves on (see start)
  python job.py drive  --run-dir DIR [--bell-fd FD]
                                      run DIR/run.json's steps in order (what start forks)
  python job.py cancel --run-dir DIR [--grace SECONDS]
  python job.py state  --run-dir DIR    print the run's state as one EVALKIT-JOB line
  python job.py events --run-dir DIR [--from STEP,OUT,ERR]
                                      the run's events from that position on (see stream_events):
                                      what a client attaching or reconnecting follows
  python job.py states --run-dirs DIR...  the same for each run, and its Slurm job, in one line
  python job.py logs   --run-dir DIR --steps N  the output of each step that started, in one line

The driver makes itself a session and process-group leader, so a dropped connection, a closed
laptop or a dead sshd never reaches it. It is exec'd with EVALKIT_RUN_ID in its environment, which
its steps inherit, so that cancel finds every process of this run in /proc (and only those, even
when a recorded pid has been reused), and it records its identity (driver.json) before it waits
for anything. Each step's stdout and stderr go to files of their own (step-N.out / step-N.err);
its exit code is written atomically to step-N.exit. The client follows these files through the
event stream (stream_events: the starter's channel, or `events` after a reconnect), by byte
offset, and can come back at any time.

The run's final state (status.json) is written once, by whoever comes first: the driver at the
run's end (succeeded, failed, refused, crashed) or cancel (cancelled), which claims it before it
signals anything. The driver looks for it before each step, so a cancel that answered holds, even
one that came before the driver (or its run directory) existed.

A lock file in the checkpoint's output directory keeps two runs, on any of a cluster's nodes, from
writing it at once: a lease whose heartbeat the driver refreshes (see the lock), taken over once
its driver is gone (this machine) or its heartbeat stopped (another machine).

Files are written so that nothing planted in their folders redirects them: each through a new
temporary file (O_EXCL, O_NOFOLLOW) renamed over its name, each stream opened O_NOFOLLOW. The
run's folder is made 0o700: its commands and output are the user's alone.
"""
import argparse
import base64
import errno
import json
import os
import re
import runpy
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic.py beside it, however it was started
import atomic  # noqa: E402  (evalkit uploads both)
from atomic import NEW_FILE  # noqa: E402

MARKER = "EVALKIT-JOB "
RUN_ID_VARIABLE = "EVALKIT_RUN_ID"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")  # as a step's traceback says them
RESERVE, RESERVE_BYTES = ".reserve", 1 << 16  # room kept for the run's own last files on a full disk


def write_new(path, data, mode=0o600):
    """DATA (text) into a new file at PATH (atomic.write_new). On a full disk the run's reserve
    beside it is given up, once, for it."""
    for last in (False, True):
        try:
            atomic.write_new(path, data, mode)
            return
        except OSError as exc:
            remove(path)
            if last or exc.errno not in FULL_DISK or not remove(os.path.join(os.path.dirname(path), RESERVE)):
                raise


def remove(path):
    """Whether PATH was there and is gone."""
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def keep_reserve(run_dir):
    """RESERVE_BYTES in the run's folder for its last files (step-N.exit, status.json), should the
    disk fill up while it runs: given up for them (write_new), or at the run's end."""
    try:
        write_new(os.path.join(run_dir, RESERVE), "\0" * RESERVE_BYTES)
    except OSError:
        pass  # full already, or kept since an earlier start: the run goes on without


def write_atomically(path, data, mode=0o600):
    """DATA (text) to PATH (atomic.write_atomically), the run's reserve given up for it on a full disk."""
    atomic.write_atomically(path, data, mode, write=write_new)


def make_dirs(path, mode):
    """`mkdir -p PATH`, every folder it makes with MODE (less the umask), not only the last as
    os.makedirs does."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def claim_end(run_dir, state, **details):
    """Write the run's final state, unless one is written already: None when this one is the run's
    state now, else the state already there (its writer came first). Linked, not renamed, into
    place: link() fails on an existing name, so of two writers exactly one wins."""
    path = os.path.join(run_dir, "status.json")
    temporary = f"{path}.tmp-{secrets.token_hex(8)}"
    try:
        write_new(temporary, json.dumps(dict(details, state=state, finished_at=now())))
        os.link(temporary, path)
    except FileExistsError:
        return read_json(path) or {"state": "unknown"}
    finally:
        remove(temporary)
    remove(os.path.join(run_dir, RESERVE))  # the run is over
    return None


def has_ended(run_dir):
    return os.path.lexists(os.path.join(run_dir, "status.json"))


def read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


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


# --- the lock -------------------------------------------------------------------------------------
# One run per checkpoint directory, across the cluster's nodes. flock is not enough there: Lustre
# mounted without `flock`, or NFS with `local_lock=flock`, grants it on every node at once. The
# lock is a lease instead: a file made with link() (atomic on NFS and Lustre too: it fails on an
# existing name), holding its holder's record, whose heartbeat the driver refreshes every
# HEARTBEAT_SECONDS. A holder on this machine (same host, same boot) is alive while its process
# is; one on another machine while its heartbeat is fresher than LEASE_SECONDS: another node's
# pids mean nothing in this node's /proc.

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


# --- drive --------------------------------------------------------------------------------------

def drive(run_dir, bell_fd=None):
    os.setsid()  # our own session and process group: the SSH session can end, we go on
    global BELL
    BELL = bell_fd
    run = read_json(os.path.join(run_dir, "run.json"))
    os.environ[RUN_ID_VARIABLE] = run["run_id"]  # already so when exec'd by start; not under a scheduler
    # Started in the background of an ssh command, the driver inherits SSH_CLIENT and SHLVL=0,
    # from which each step's `bash -c` concludes that sshd started it and reads ~/.bashrc again
    # (conda init: tenths of a second per step, and whatever else it does). The ssh session
    # has read it once already, as it does for a command typed by hand.
    os.environ["SHLVL"] = str(max(1, int(os.environ.get("SHLVL") or 0)))
    lock = run.get("lock")
    record = dict(identity(os.getpid()), pgid=os.getpgid(0), started_at=now())
    # who we are, before any wait: a cancel from now on finds us (start waits for waiting_for_lock false)
    write_atomically(os.path.join(run_dir, "driver.json"), json.dumps(dict(record, waiting_for_lock=bool(lock))))
    held = None
    if lock and not has_ended(run_dir):
        make_dirs(os.path.dirname(lock), 0o755)  # features others may read; the umask may narrow it
        held, holder, stale = acquire_lock(lock, run["run_id"])
        if held is None:
            finish(run_dir, "refused", holder=holder)
            return
        record["took_over_stale_lock"] = stale
    try:
        write_atomically(os.path.join(run_dir, "driver.json"), json.dumps(record))
        ring()
        beside = start_beside(run_dir, run.get("beside") or [])
        state, details = None, {}
        try:
            state, details = run_steps(run_dir, run["steps"])
        finally:
            end_beside(beside, keep=state == "succeeded")
    finally:
        if held is not None:
            release_lock(held, lock)
    if state is not None:
        finish(run_dir, state, **details)


def run_steps(run_dir, steps):
    """Each step in turn until one fails: ("succeeded" or "failed", details of the failure); a
    state of None when the run ended meanwhile (cancelled: no further step starts).

    A step marked beside_next (evalkit's own per-query hits) starts and the next step starts at
    once, beside it; it is waited for once the next step ends (before any later step starts), and
    the first step, by index, that failed is the run's failed step."""
    overlapping = []  # (index, thread) of the steps running beside the next one
    failed = None
    for index, step in enumerate(steps):
        if has_ended(run_dir):
            failed = "ended"
            break
        if step.get("beside_next") and index + 1 < len(steps):
            overlapping.append(start_step_beside(run_dir, index, step["command"]))
            continue
        if run_step(run_dir, index, step["command"]) != 0:
            failed = index
            break
        # a step beside this one overlaps it only: it ends before a later step starts, and if it
        # failed the run fails and nothing more starts
        if any(waited.join() != 0 for _, waited in overlapping):
            break
    codes = {index: waited.join() for index, waited in overlapping}
    failures = sorted([index for index, code in codes.items() if code != 0] +
                      ([failed] if isinstance(failed, int) else []))
    if failed == "ended":
        return None, {}
    if failures:
        index = failures[0]
        return "failed", dict(failed_step=index, **disk_full(run_dir, index, steps[index].get("outputs") or []))
    return "succeeded", {}


class StepBeside:
    """Step INDEX run in a thread of the driver: its files are written as run_step writes them."""

    def __init__(self, run_dir, index, command):
        self.code = None
        self.thread = threading.Thread(target=self._run, args=(run_dir, index, command), daemon=True)
        self.thread.start()

    def _run(self, run_dir, index, command):
        try:
            self.code = run_step(run_dir, index, command)
        except Exception:  # the run's end says it failed: a step with no exit code
            traceback.print_exc()
            self.code = -1

    def join(self):
        self.thread.join()
        return self.code


def start_step_beside(run_dir, index, command):
    """(INDEX, the running step): its .started is written before the next step's."""
    running = StepBeside(run_dir, index, command)
    base = os.path.join(run_dir, f"step-{index}")
    while running.thread.is_alive() and not os.path.exists(f"{base}.started"):
        time.sleep(0.001)
    return index, running


def start_beside(run_dir, commands):
    """Start each of COMMANDS ({"name", "command"}: evalkit's provenance) in the background of
    the steps, at a low priority, its output in beside-NAME.out / .err; the running processes.
    Nothing waits on them before the run's steps end (end_beside)."""
    running = []
    for command in commands:
        base = os.path.join(run_dir, f"beside-{command['name']}")
        with open(os.open(f"{base}.out", NEW_FILE | os.O_TRUNC, 0o600), "wb") as out, \
                open(os.open(f"{base}.err", NEW_FILE | os.O_TRUNC, 0o600), "wb") as err:
            process = subprocess.Popen(["bash", "-c", command["command"]], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, preexec_fn=in_background_group)
        running.append((base, process))
    return running


BESIDE_NICENESS = 10  # the upstream steps come first on a busy CPU; the hashing fills the gaps


def in_background_group():
    """In the child, before exec: a process group of its own (end_beside stops bash and its
    python at once; cancel finds them by the run's id) and a low priority."""
    os.setpgid(0, 0)
    os.nice(BESIDE_NICENESS)


def end_beside(running, keep):
    """KEEP (the steps succeeded): wait for each, then write its exit code to beside-NAME.exit;
    else stop it (nothing will read what it writes)."""
    for base, process in running:
        if not keep:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass  # ended already
        code = process.wait()
        if keep:
            write_atomically(f"{base}.exit", f"{code}\n")


def disk_full(run_dir, index, outputs):
    """When step INDEX failed for a full disk (its stderr says so): its OUTPUTS, half-written,
    removed; {"disk_full": {"path", "free", "removed"}} for status.json, else {}."""
    try:
        with open(os.path.join(run_dir, f"step-{index}.err"), "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 65536))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return {}
    if not any(text in tail for text in FULL_DISK_TEXTS):
        return {}
    removed = [path for path in outputs if remove(path)]
    where = os.path.dirname(outputs[0]) if outputs else run_dir
    try:
        usage = os.statvfs(where)
        free = usage.f_bavail * usage.f_frsize
    except OSError:
        free = None
    return {"disk_full": {"path": where, "free": free, "removed": removed}}


def drive_or_report(run_dir, bell_fd=None):
    try:
        drive(run_dir, bell_fd)
    except Exception as exc:  # the client is waiting on status.json: tell it, then fail loudly
        finish(run_dir, "crashed", error=f"{type(exc).__name__}: {exc}")
        raise


def start(timeout):
    """The client's first command, before it knows the run: its login shell and the env's
    activation serve evalkit's read-only checks too. From stdin, one JSON line each:

    {"helpers": {NAME: {"script", "args", "env", "pythonpath"}}}  (optional) run these scripts at once,
        answer {"helpers": {NAME: {"exit_code", "stdout", "stderr"}}} on an EVALKIT-JOB line;
    {"run_dir", "run", "submit": {"script", "argv", "name"}}  write run.json and hand the driver
        to a scheduler (see submit); answer what the submitting command said, and the job's id;
    {"run_dir", "run"}  write run.json, start the driver in the background, and answer
        {"status", "driver"} once it holds the lock (driver.json) or has finished already
        (status.json: refused, crashed); then the run's events (stream_events), from its first
        step, until it ends and stdin does.
    Either run request may hold "beside_run": {NAME: TEXT} written beside run.json first (the
    provenance); a file that cannot be written (a full disk) is answered {"not_written": {"path",
    "error"}}, and nothing is started, nor left in the run's folder.

    An empty stdin (EOF) means no run after all."""
    request = read_request()
    if request is not None and "helpers" in request:
        answer({"helpers": run_helpers(request["helpers"])})
        request = read_request()
    if request is None:
        return
    run_dir = request["run_dir"]
    not_written = write_run_files(run_dir, {**request.get("beside_run", {}),
                                            "run.json": json.dumps(request["run"], ensure_ascii=False)})
    if not_written is not None:
        answer({"not_written": not_written})
        return
    if "submit" in request:  # a scheduler starts the driver (executors/slurm.py)
        answer(submit(run_dir, request["submit"]))
        return
    if has_ended(run_dir):  # cancelled before it started: no driver at all
        answer({"status": read_json(os.path.join(run_dir, "status.json")), "driver": None})
        return
    bell, bell_end = os.pipe()
    os.set_blocking(bell_end, False)  # the driver never waits on the bell
    driver = fork_driver(run_dir, request["run"]["run_id"], bell, bell_end)
    os.close(bell_end)
    answer(wait_for_driver(run_dir, driver, bell, timeout))
    stream_events(run_dir, Position(), bell, driver)


def write_run_files(run_dir, files):
    """The run's folder (the user's alone: the run's commands and output), its reserve and FILES
    ({NAME: TEXT}, run.json last); None once written, else {"path", "error"} of the first that
    could not be, with every file of them removed again."""
    written, path = [], run_dir
    try:
        make_dirs(run_dir, 0o700)
        keep_reserve(run_dir)
        for name, text in files.items():
            path = os.path.join(run_dir, os.path.basename(name))  # a name, never a path elsewhere
            write_atomically(path, text)
            written.append(path)
    except OSError as exc:
        for path_written in [*written, os.path.join(run_dir, RESERVE)]:
            remove(path_written)
        return {"path": path, "error": exc.strerror or str(exc)}
    return None


def submit(run_dir, request):
    """Write the batch script to DIR/job.sh and run REQUEST's argv on it from DIR (sbatch); its exit
    code, output and job id (None when no job of it is in the queue). The id is kept in
    DIR/slurm.json, for state and cancel, before the answer: whoever asks later finds the job."""
    script = os.path.join(run_dir, "job.sh")
    write_atomically(script, request["script"])
    try:
        done = subprocess.run([*request["argv"], script], cwd=run_dir, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace")
    except OSError as exc:  # no sbatch on this machine's PATH
        return {"exit_code": 127, "stdout": "", "stderr": f"{request['argv'][0]}: {exc.strerror}", "job_id": None}
    job_id = submitted_job_id(done.stdout) if done.returncode == 0 else None
    if job_id is None and request.get("name"):
        job_id = queued_job_named(request["name"])
    if job_id is not None:
        write_atomically(os.path.join(run_dir, "slurm.json"), json.dumps({"job_id": job_id, "submitted_at": now()}))
    return {"exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "job_id": job_id}


def submitted_job_id(stdout):
    """`sbatch --parsable` prints `ID` or `ID;CLUSTER` on a line of its own; a site's wrapper or
    submit plugin may print notices before or after it. The one such line's id, else None (none,
    or several: then the queue is asked, queued_job_named)."""
    found = [line.strip().split(";")[0] for line in stdout.splitlines()
             if PARSABLE_ID.fullmatch(line.strip())]
    return found[0] if len(found) == 1 else None


PARSABLE_ID = re.compile(r"[0-9]+(;[A-Za-z0-9_.-]+)?")


def queued_job_named(name):
    """The id of the one job named NAME (evalkit-<run id>-<label>: the run's own) that Slurm
    knows, finished ones too; None when it knows none (sbatch refused it) or cannot be asked."""
    try:
        listed = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = sorted({line.strip() for line in listed.stdout.splitlines() if line.strip().isdigit()})
    return found[0] if listed.returncode == 0 and len(found) == 1 else None


def fork_driver(run_dir, run_id, bell, bell_end):
    """The driver (`job.py drive`), exec'd in a child (see fork) with RUN_ID in its environment
    (/proc shows a process the environment it was exec'd with, never a later os.environ), its
    streams in DIR/driver.log rather than on the SSH session's pipes; its pid."""
    def driver():
        os.close(bell)
        log = os.open(os.path.join(run_dir, "driver.log"), NEW_FILE | os.O_TRUNC, 0o600)
        redirect_streams(log, log)
        os.close(log)
        os.set_inheritable(bell_end, True)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), "drive", "--run-dir", run_dir,
                                   "--bell-fd", str(bell_end)], dict(os.environ, **{RUN_ID_VARIABLE: run_id}))
    return fork(driver)


def fork(child):
    """CHILD() in a child of this process: this is the python it would run under, so there is no
    interpreter to start. Its pid; the child exits with what CHILD returns (1 if it raised) and
    never returns into the starter's code."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        code = child()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def redirect_streams(stdout_fd, stderr_fd):
    """stdin from /dev/null, stdout and stderr to these descriptors: nothing on the SSH pipes."""
    null = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((null, 0), (stdout_fd, 1), (stderr_fd, 2)):
        os.dup2(fd, target)
    os.close(null)


def wait_for_driver(run_dir, driver, bell, timeout):
    """{"status", "driver"} once the driver holds the lock or has finished (refused, crashed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_json(os.path.join(run_dir, "status.json"))
        started = read_json(os.path.join(run_dir, "driver.json"))
        if status or (started and not started.get("waiting_for_lock")):
            return {"status": status, "driver": started}
        ended, status = os.waitpid(driver, os.WNOHANG)
        if ended and not os.path.exists(os.path.join(run_dir, "status.json")):
            return {"status": {"state": "crashed", "error": f"the driver exited with status {exit_code_of(status)}"},
                    "driver": None}
        if select.select([bell], [], [], 0.05)[0] and not os.read(bell, 4096):
            time.sleep(0.01)  # the driver closed its bell: it is ending, and waitpid will say how
    return {"status": None, "driver": None}


def read_request():
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def answer(result):
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_helpers(helpers):
    """Run every helper at once, each forked (see fork); each one's exit code and output (text:
    undecodable bytes survive as surrogates)."""
    running = {}
    for name, call in helpers.items():
        outputs = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # no pipe to fill up
        running[name] = (fork(lambda: run_helper(call, outputs[0].fileno(), outputs[1].fileno())), outputs)
    answers = {}
    for name, (pid, outputs) in running.items():
        _, status = os.waitpid(pid, 0)
        texts = []
        for output in outputs:
            output.seek(0)
            texts.append(output.read().decode("utf-8", "surrogateescape"))
            output.close()
        answers[name] = {"exit_code": exit_code_of(status), "stdout": texts[0], "stderr": texts[1]}
    return answers


def run_helper(call, stdout_fd, stderr_fd):
    """In a forked child: CALL's script as `python -u SCRIPT ARGS` would run it, with its env and
    PYTHONPATH; its exit status."""
    redirect_streams(stdout_fd, stderr_fd)
    os.environ.update(call.get("env", {}))
    paths = list(call.get("pythonpath", []))
    if paths:  # for whatever the script starts, as in its own login shell
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    script = through_checked_folder(call["script"])
    sys.path[:1] = [os.path.dirname(os.path.abspath(script)), *paths]  # -c's '' was first
    sys.argv = [script, *call.get("args", [])]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return exit_status(exc.code)
    return 0


def through_checked_folder(script):
    """SCRIPT (a path the client sent) through the descriptor bootstrap.py opened and checked
    evalkit's scripts folder by (SCRIPTS_FOLDER: (its name, /proc/self/fd/N)), when SCRIPT is in
    that folder: a folder swapped since the check runs nothing."""
    checked = globals().get("SCRIPTS_FOLDER")
    if checked and os.path.dirname(script) == checked[0]:
        return os.path.join(checked[1], os.path.basename(script))
    return script


def exit_code_of(status):
    """A waitpid status as subprocess reports it: the exit code, or minus the signal."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def exit_status(code):
    """The process status sys.exit(CODE) gives."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_step(run_dir, index, command):
    base = os.path.join(run_dir, f"step-{index}")
    write_atomically(f"{base}.started", now())
    ring()
    started = time.monotonic()
    with open(os.open(f"{base}.out", NEW_FILE | os.O_TRUNC, 0o600), "wb") as out, \
            open(os.open(f"{base}.err", NEW_FILE | os.O_TRUNC, 0o600), "wb") as err:
        code = subprocess.call(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    # the exit code, then the step's own duration (a client attaching later cannot measure it)
    write_atomically(f"{base}.exit", f"{code}\n{time.monotonic() - started:.3f}\n")
    ring()
    return code


def finish(run_dir, state, **details):
    """The run's final state, unless a cancel came first (claim_end)."""
    claim_end(run_dir, state, **details)
    ring()


# --- the bell -----------------------------------------------------------------------------------
# The driver writes a byte to a pipe from its starter each time a file the client waits for
# appears (driver.json, step-N.started, step-N.exit, status.json); the starter's event stream
# looks at once instead of at its next poll. The files stay the truth: a bell nobody hears (the
# client detached, the starter gone) changes nothing.

BELL = None


def ring():
    global BELL
    if BELL is None:
        return
    try:
        os.write(BELL, b".")
    except BlockingIOError:
        pass  # a full pipe already holds a ring the starter has not passed on
    except OSError:
        BELL = None  # the starter is gone: nobody to tell


# --- events ---------------------------------------------------------------------------------------
# What the client follows: the run's files, read here (free: no network between) and pushed as
# one EVALKIT-EVENT JSON line per event on stdout, in order:
#   {"e": "started", "step": N}
#   {"e": "output", "step": N, "stream": "stdout"|"stderr", "at": OFFSET, "b64": BYTES}
#   {"e": "ended", "step": N, "code": EXIT, "seconds": S}
#   {"e": "end", "status": status.json}                       the run ended (once)
#   {"e": "beat", "alive": BOOL}                              every BEAT_EVERY s: the driver lives
#   {"e": "wrote", "path": P[, "error": TEXT, "errno": N]}   a write the client asked for
#   {"e": "bundle", "files": {P: {"mtime", "b64"} | null}}    the files the client asked for
# Steps are followed in order from a Position (the step, and the bytes of each stream already
# had), so a client that reconnects (`job.py events`) misses nothing and gets nothing twice.
# stdin takes one JSON line per request: {"write": {"path", "data", "mode"}} (the run's manifest),
# {"collect": [PATH, ...]} (the results, at the end); its EOF ends the stream.

EVENT_MARKER = "EVALKIT-EVENT "
EVENT_POLL = 0.05    # seconds between looks at the run's files
BEAT_EVERY = 3.0     # the client takes silence for a dead link after a few of these
OUTPUT_CHUNK = 1 << 16
END_LINGER = 300.0   # after the run's end, how long stdin's requests (collect) are waited for
STREAM_FILES = (("stdout", "out"), ("stderr", "err"))


class Position:
    """Where a client is in the run: the step it follows, whether its start was seen, and the
    bytes of each of its streams it has."""

    def __init__(self, step=0, stdout=0, stderr=0):
        self.step, self.started, self.ended = step, False, False
        self.offsets = {"stdout": stdout, "stderr": stderr}


def new_output(path, offset):
    """The bytes of PATH from OFFSET (b"" when there is none yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return b""


def scan(run_dir, position, steps):
    """The events since POSITION (which moves past them): each started step's new output, its
    end once step-N.exit says it, and the run's end once status.json is there."""
    found = []
    while not position.ended:
        base = os.path.join(run_dir, f"step-{position.step}")
        status = read_json(os.path.join(run_dir, "status.json")) if has_ended(run_dir) else None
        if position.step >= steps or (not position.started and not os.path.exists(f"{base}.started")):
            if status is not None:  # the run ended with no further step started
                found.append({"e": "end", "status": status})
                position.ended = True
            break
        if not position.started:
            position.started = True
            found.append({"e": "started", "step": position.step})
        exited = read_text(f"{base}.exit")  # before the output: then all of it is read below
        for stream, suffix in STREAM_FILES:
            chunk = new_output(f"{base}.{suffix}", position.offsets[stream])
            for start in range(0, len(chunk), OUTPUT_CHUNK):
                piece = chunk[start:start + OUTPUT_CHUNK]
                found.append({"e": "output", "step": position.step, "stream": stream,
                              "at": position.offsets[stream], "b64": base64.b64encode(piece).decode("ascii")})
                position.offsets[stream] += len(piece)
        fields = (exited or "").split()
        if not fields:
            if status is not None:  # stopped mid-step (cancelled, killed): no exit code will come
                found.append({"e": "end", "status": status})
                position.ended = True
            break
        found.append({"e": "ended", "step": position.step, "code": int(fields[0]),
                      "seconds": float(fields[1]) if len(fields) > 1 else None})
        position.step, position.started = position.step + 1, False
        position.offsets = {"stdout": 0, "stderr": 0}
    return found


def serve(request):
    """The event answering one request line from the client (see the events section)."""
    if "write" in request:
        wanted = request["write"]
        try:
            make_dirs(os.path.dirname(wanted["path"]), 0o755)
            write_atomically(wanted["path"], wanted["data"], wanted.get("mode", 0o644))
        except OSError as exc:
            return {"e": "wrote", "path": wanted["path"], "error": exc.strerror or str(exc), "errno": exc.errno}
        return {"e": "wrote", "path": wanted["path"]}
    return {"e": "bundle", "files": {path: collected(path) for path in request.get("collect", [])}}


def collected(path):
    """{"mtime" (whole seconds, as SFTP says it), "b64"} of PATH, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return {"mtime": int(os.fstat(handle.fileno()).st_mtime),
                    "b64": base64.b64encode(handle.read()).decode("ascii")}
    except OSError:
        return None


def has_exited(child):
    """Whether CHILD has exited (reaped now, if it had not been: no zombie stays behind)."""
    try:
        return os.waitpid(child, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True  # reaped already (wait_for_driver)


def send_event(found):
    sys.stdout.write(EVENT_MARKER + json.dumps(found) + "\n")


def stream_events(run_dir, position, bell=None, driver=None):
    """The run's events on stdout from POSITION until the run has ended and stdin has too (or
    END_LINGER after the end); a heartbeat every BEAT_EVERY seconds meanwhile. BELL (start's
    pipe from the driver) wakes it early; DRIVER, start's child, is reaped once it exits."""
    steps = len((read_json(os.path.join(run_dir, "run.json")) or {}).get("steps") or [])
    driver_file, requests, waiting = os.path.join(run_dir, "driver.json"), b"", [sys.stdin.fileno()]
    if bell is not None:
        waiting.append(bell)
    last_beat, ended_at = 0.0, None
    try:
        while True:
            for found in scan(run_dir, position, steps):
                send_event(found)
            if position.ended and ended_at is None:
                ended_at = time.monotonic()
            if time.monotonic() - last_beat > BEAT_EVERY and not position.ended:
                alive = is_alive(read_json(driver_file))
                if alive or not has_ended(run_dir):  # else the next scan tells how it ended
                    send_event({"e": "beat", "alive": alive})
                last_beat = time.monotonic()
            sys.stdout.flush()
            if ended_at is not None and time.monotonic() - ended_at > END_LINGER:
                return
            readable = select.select(waiting, [], [], EVENT_POLL)[0]
            if bell in readable and not os.read(bell, 4096):
                waiting.remove(bell)  # the driver is gone: the files alone say what comes
            if driver is not None and has_exited(driver):
                driver = None
            if sys.stdin.fileno() in readable:
                received = os.read(sys.stdin.fileno(), 1 << 20)
                if not received:
                    return  # the client is gone, or done
                *lines, requests = (requests + received).split(b"\n")
                for line in lines:
                    if line.strip():
                        send_event(serve(json.loads(line)))
    except BrokenPipeError:
        return  # the client is gone


# --- cancel -------------------------------------------------------------------------------------

def cancel(run_dir, grace):
    """Claim the run's end (status.json: cancelled) unless it ended already, then SIGTERM to its
    processes, GRACE seconds, SIGKILL; report what remains, and the state the run had already
    ended in ("ended"), if so. Before the run's start (a launch in flight) the claim alone stops
    it: start and the driver find it."""
    make_dirs(run_dir, 0o700)
    ended = claim_end(run_dir, "cancelled")
    run = read_json(os.path.join(run_dir, "run.json")) or {}
    run_id = run.get("run_id")
    driver = read_json(os.path.join(run_dir, "driver.json"))
    targets = processes_of(run_id) if run_id else []
    if driver and is_alive(driver):
        try:
            os.killpg(driver["pgid"], signal.SIGTERM)  # the group leader is verified to be ours
        except OSError:
            pass
    signal_all(targets, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and processes_of(run_id):
        time.sleep(0.1)
    killed = processes_of(run_id)
    signal_all(killed, signal.SIGKILL)
    time.sleep(0.2)
    remaining = processes_of(run_id)
    if run.get("lock"):
        release_dead_lock(run["lock"], run_id)
    return {"signalled": sorted(set(targets)), "killed": killed, "remaining": remaining,
            "gpu_processes": gpu_processes(remaining), "ended": (ended or {}).get("state")}


def signal_all(pids, signum):
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def gpu_processes(pids):
    """Those of PIDS that nvidia-smi lists as GPU processes ([] when there is no nvidia-smi)."""
    try:
        listed = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [pid for pid in pids if str(pid) in listed]


def state(run_dir):
    driver = read_json(os.path.join(run_dir, "driver.json"))
    status = read_json(os.path.join(run_dir, "status.json"))
    return {"status": status, "driver": driver, "driver_alive": is_alive(driver)}


def states(run_dirs):
    """Each run's state, and its Slurm job (slurm.json) where it was submitted: `status` asks for
    all of a host's runs at once."""
    return {"states": {run_dir: {**state(run_dir), "slurm": read_json(os.path.join(run_dir, "slurm.json"))}
                       for run_dir in run_dirs}}


def logs(run_dir, steps):
    """The output of each of the first STEPS steps that started, in order: stdout and stderr as
    text (undecodable bytes kept as surrogates), and its .exit file's text while it has one."""
    found = []
    for index in range(steps):
        base = os.path.join(run_dir, f"step-{index}")
        if not os.path.exists(base + ".started"):
            break
        found.append({name: read_text(f"{base}.{name}") for name in ("out", "err", "exit")})
    return {"steps": found}


def read_text(path):
    """PATH's text (undecodable bytes kept as surrogates), or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=("start", "drive", "cancel", "state", "states", "logs", "events"))
    parser.add_argument("--run-dir", help="every action but start (which reads it from stdin) and states")
    parser.add_argument("--run-dirs", nargs="*", default=[], help="states: the runs to answer for")
    parser.add_argument("--steps", type=int, default=0, help="logs: how many steps the run has")
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="start: how long to wait for the driver")
    parser.add_argument("--bell-fd", type=int, help="drive: the starter's bell (see ring)")
    parser.add_argument("--from", dest="position", default="0,0,0",
                        help="events: STEP,STDOUT BYTES,STDERR BYTES the client has already")
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.timeout)
        return
    if args.action == "drive":
        drive_or_report(args.run_dir, args.bell_fd)
        return
    if args.action == "events":
        stream_events(args.run_dir, Position(*(int(part) for part in args.position.split(","))))
        return
    actions = {"cancel": lambda: cancel(args.run_dir, args.grace), "state": lambda: state(args.run_dir),
               "states": lambda: states(args.run_dirs), "logs": lambda: logs(args.run_dir, args.steps)}
    answer(actions[args.action]())


if __name__ == "__main__":
    main(sys.argv[1:])
