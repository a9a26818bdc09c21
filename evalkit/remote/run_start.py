"""The run's starter (standard library only; imported by job.py beside it): `job.py start`, the
client's first command. It runs evalkit's read-only checks (the helpers) in the env the login
shell activated, writes the run's folder and run.json, then starts the driver (job.py drive) in
the background, or hands it to a scheduler (submit), and follows the run's events on its channel.
"""
import json
import os
import re
import runpy
import select
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the modules beside it, however it was started
from atomic import NEW_FILE  # noqa: E402  (evalkit uploads them with job.py)
from run_files import (RESERVE, has_ended, keep_reserve, make_dirs, now, read_json, remove,  # noqa: E402
                       write_atomically)
from run_processes import RUN_ID_VARIABLE  # noqa: E402
from run_events import Position, stream_events  # noqa: E402

MARKER = "EVALKIT-JOB "


def start(timeout, driver_script, checked_folder=None):
    """The client's first command, before it knows the run: its login shell and the env's
    activation serve evalkit's read-only checks too. DRIVER_SCRIPT: job.py's own path, which the
    driver is exec'd by; CHECKED_FOLDER: see through_checked_folder. From stdin, one JSON line each:

    {"look": [PATH, ...]}  (optional, before the rest) answer {"there": [PATH, ...]}: those that exist
        (the dataset folders' layout, looked at while the laptop decides the run);
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
    while request is not None and "look" in request:
        answer({"there": [path for path in request["look"] if os.path.exists(path)]})
        request = read_request()
    if request is not None and "helpers" in request:
        answer({"helpers": run_helpers(request["helpers"], checked_folder)})
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
    driver = fork_driver(run_dir, request["run"]["run_id"], bell, bell_end, driver_script)
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


def fork_driver(run_dir, run_id, bell, bell_end, driver_script):
    """The driver (`job.py drive`: DRIVER_SCRIPT), exec'd in a child (see fork) with RUN_ID in its environment
    (/proc shows a process the environment it was exec'd with, never a later os.environ), its
    streams in DIR/driver.log rather than on the SSH session's pipes; its pid."""
    def driver():
        os.close(bell)
        log = os.open(os.path.join(run_dir, "driver.log"), NEW_FILE | os.O_TRUNC, 0o600)
        redirect_streams(log, log)
        os.close(log)
        os.set_inheritable(bell_end, True)
        os.execve(sys.executable, [sys.executable, driver_script, "drive", "--run-dir", run_dir,
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


def run_helpers(helpers, checked_folder=None):
    """Run every helper at once, each forked (see fork); each one's exit code and output (text:
    undecodable bytes survive as surrogates)."""
    running = {}
    for name, call in helpers.items():
        outputs = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # no pipe to fill up
        helper = fork(lambda: run_helper(call, outputs[0].fileno(), outputs[1].fileno(), checked_folder))
        running[name] = (helper, outputs)
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


def run_helper(call, stdout_fd, stderr_fd, checked_folder=None):
    """In a forked child: CALL's script as `python -u SCRIPT ARGS` would run it, with its env and
    PYTHONPATH; its exit status."""
    redirect_streams(stdout_fd, stderr_fd)
    os.environ.update(call.get("env", {}))
    paths = list(call.get("pythonpath", []))
    if paths:  # for whatever the script starts, as in its own login shell
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    script = through_checked_folder(call["script"], checked_folder)
    sys.path[:1] = [os.path.dirname(os.path.abspath(script)), *paths]  # -c's '' was first
    sys.argv = [script, *call.get("args", [])]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return exit_status(exc.code)
    return 0


def through_checked_folder(script, checked):
    """SCRIPT (a path the client sent) through the descriptor bootstrap.py opened and checked
    evalkit's scripts folder by (CHECKED: (its name, /proc/self/fd/N), the SCRIPTS_FOLDER it gave
    job.py; None without it), when SCRIPT is in that folder: a folder swapped since the check runs
    nothing."""
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
