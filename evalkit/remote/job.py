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
writing it at once (run_lock.py: a lease with a heartbeat). The run's folder is made 0o700: its
commands and output are the user's alone.

This file is the entry: its actions and the driver. Its other concerns live beside it, in modules
of their own that it imports from the same folder (under bootstrap.py, /proc/self/fd/N), standard
library only, uploaded and checked with it (server.DRIVER_SCRIPTS):
  run_start.py      the starter (start): the checks' helpers, the run's files, the driver forked or
                    submitted to a scheduler
  run_events.py     the event stream (stream_events, scan, serve, Position)
  run_lock.py       the checkpoint's lock: a lease, its heartbeat, a stale one's takeover
  run_files.py      the run's files, written so that nothing planted redirects them; the run's end
                    (claim_end) and its reserve on a full disk
  run_processes.py  a process's identity (pid, start time, boot) and the processes of one run
  atomic.py         the writer (also query_hits.py's)
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the modules beside it, however it was started
from atomic import NEW_FILE  # noqa: E402  (evalkit uploads them all: server.DRIVER_SCRIPTS)
from run_events import Position, stream_events  # noqa: E402
from run_files import (claim_end, has_ended, make_dirs, now, read_json, read_text, remove,  # noqa: E402
                       write_atomically)
from run_lock import acquire_lock, release_dead_lock, release_lock  # noqa: E402
from run_processes import RUN_ID_VARIABLE, identity, is_alive, processes_of  # noqa: E402
from run_start import answer, start  # noqa: E402

FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded")  # as a step's traceback says them


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

    A step marked beside_rest (evalkit's own per-query hits) starts, and the steps after it start
    at once and run beside it; it is waited for once they have ended (or one failed), and the
    first step, by index, that failed is the run's failed step."""
    overlapping = []  # (index, thread) of the steps running beside the later ones
    failed = None
    for index, step in enumerate(steps):
        if has_ended(run_dir):
            failed = "ended"
            break
        if step.get("beside_rest") and index + 1 < len(steps):
            overlapping.append(start_step_beside(run_dir, index, step["command"]))
            continue
        if run_step(run_dir, index, step["command"]) != 0:
            failed = index
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
        start(args.timeout, os.path.abspath(__file__), globals().get("SCRIPTS_FOLDER"))  # see run_start.start
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

