"""The run's starter: remote/job.py start, begun (through remote/bootstrap.py) before the run is
known, so that one login shell and one activation of the user's env serve everything before the
run and the run itself. Its protocol, one JSON line each way (answers marked EVALKIT-JOB):

1. files: the SHA-256 of each server script; it answers which are missing or differ, then
   takes their sources (an unchanged evalkit uploads nothing), or refuses a scripts folder that
   other users could write. Sent with the first message of 2 or 3, in one round trip;
2. helpers: evalkit's checks (the inspection, the preflight), run at once in its env;
3. run: the run's steps; it starts the driver and answers once the driver holds the lock,
   then stays as the run's event stream (remote/run_events.py stream_events; events.py reads it).
"""
from __future__ import annotations

import json
import threading
from typing import Any

from .config import Settings
from .errors import EvalkitError, RemoteStepFailed
from .progress import last_marked_json
from .server import JOB_RUNNER, PROBE, PROVENANCE, ZEROSHOT, ServerCall, in_server_env, script_call, \
    scripts_for, through_bootstrap
from .ssh import Connection, PendingCommand
from .uploads import bootstrap_source, script_digests, script_source

MARKER = b"EVALKIT-JOB "
START_TIMEOUT = 60.0
START_ARGS = ("start", "--timeout", f"{START_TIMEOUT:g}")
TAIL_LINES = 30
ANY_TASK = (PROBE, ZEROSHOT, PROVENANCE)  # the extra scripts of a retrieval or a classification run
CallResult = tuple[int, bytes, bytes]  # exit status, stdout, stderr


class Starter:
    def __init__(self, command: PendingCommand, settings: Settings, scripts: list[str]) -> None:
        self.command, self.settings = command, settings
        self._unchecked: list[str] | None = scripts  # until they travel with the first message
        self._checked: set[str] = set()

    def covers(self, scripts: list[str]) -> bool:
        """Whether SCRIPTS are among those it makes (or made) current."""
        return set(scripts) <= set(self._unchecked or self._checked)

    @classmethod
    def begin(cls, connection: Connection, settings: Settings, scripts: list[str],
              job_args: tuple[str, ...] = START_ARGS) -> "Starter":
        """Start it; SCRIPTS (job.py among them) are made current on the server with the first
        message (ask, finish), in the same round trip: a failing `activate`, or an unsafe
        scripts folder, is reported there. JOB_ARGS: what job.py does then (another action than
        start: `status`'s one ask, read with finish()). The one begun early (begin_early) on
        CONNECTION, if any, is taken rather than a new one."""
        command = start_command(settings, job_args)
        early = _Early.take(connection, command)
        taken = early.starter_for(scripts) if early is not None else None
        return taken or cls(connection.start_command(command), settings, scripts)

    @staticmethod
    def begin_early(connection: Connection, settings: Settings) -> None:
        """Begin a run's starter in the background now, before the run is known: the server's
        login shell, the env's activation (`conda activate`: up to a second) and python start
        while the laptop looks at the dataset (look_early) and decides; the first begin() of a
        run on CONNECTION takes it. Untaken (the command failed before its evaluation), it ends
        when CONNECTION closes: its command is abandoned and it is forgotten."""
        _Early.begin(connection, settings)

    @staticmethod
    def look_early(connection: Connection, settings: Settings, paths: list[str]) -> set[str] | None:
        """Those of PATHS that exist on the server, asked of the starter begun early (one round
        trip, with the scripts' check; no shell of its own); None without one."""
        early = _Early.find(connection, start_command(settings))
        starter = early.looking_starter() if early is not None else None
        if starter is None:
            return None
        answered = starter.ask({"look": paths}, START_TIMEOUT)
        return set(answered["there"]) if answered is not None and "there" in answered else None

    def _exchange(self, then: bytes) -> dict | None:
        """The scripts' digests, THEN (the first message, which the bootstrap keeps for its script
        while it writes the scripts that differ); their sources when some are missing. The
        bootstrap's last answer, or None when the command ended first (finish() says how)."""
        scripts, self._unchecked = self._unchecked or [], None
        self._checked = set(scripts)
        answered = self.command.ask(_line({"files": script_digests(scripts)}) + then, MARKER, START_TIMEOUT)
        if answered is not None and answered.get("missing"):
            sources = {name: script_source(name).decode("utf-8") for name in answered["missing"]}
            answered = self.command.ask(_line({"files": sources}), MARKER, START_TIMEOUT)
        if answered is not None and answered.get("refused"):  # evalkit's folder is unsafe, or cannot be written
            self.command.finish(b"", START_TIMEOUT)
            raise RemoteStepFailed(answered["refused"], answered.get("fix"))
        return answered

    def _make_current(self, then: bytes) -> None:
        """_exchange, and a failure to start said as one: the env, or python, did not start."""
        answered = self._exchange(then)
        if answered is None:
            exit_code, stdout, stderr = self.command.finish(b"", START_TIMEOUT)
            tail = (stderr or stdout).decode("utf-8", "replace").splitlines()[-TAIL_LINES:]
            raise RemoteStepFailed(
                f"starting evalkit on the server failed with status {exit_code}\nits output:\n"
                + "\n".join(f"  {line}" for line in tail),
                f"check the `activate` ({self.settings.activate}) and `python` ({self.settings.python}) settings: "
                "the env must start in a login shell (python -m evalkit doctor)")

    def make_current(self) -> None:
        """Make the scripts current now (the first message carries nothing else): for an action
        that streams (job.py events), whose output is read as it comes."""
        if self._unchecked is not None:
            self._make_current(b"")

    def run_to_end(self, timeout: float) -> tuple[bool, CallResult]:
        """Its scripts made current, then its script run to its end (a script other than job.py,
        whose output is its own: the doctor's probe). Whether the bootstrap answered (then the env
        activated and python ran), and the script's exit status, stdout and stderr: all the
        command printed, when the bootstrap never answered. RemoteStepFailed: a refused folder."""
        answered = self._exchange(b"") if self._unchecked is not None else {}
        return answered is not None, self.command.finish(b"", timeout)

    def finish(self, timeout: float) -> dict | None:
        """Its last answer once it ended (job.py's action other than start); None without one."""
        self.make_current()
        _, stdout, _ = self.command.finish(b"", timeout)
        return last_marked_json(stdout, MARKER)

    def ask(self, message: dict, timeout: float) -> dict | None:
        """Send MESSAGE; its answer, or None when the starter ended instead."""
        if self._unchecked is not None:
            self._make_current(then=_line(message))
            return self.command.ask(b"", MARKER, timeout)
        return self.command.ask(_line(message), MARKER, timeout)

    def run_scripts(self, calls: dict[str, ServerCall], timeout: float) -> dict[str, CallResult]:
        """CALLS, all at once, in its activated env. When the starter ended instead of
        answering, each gets its status and output, so the caller reports that failure as its own."""
        answered = self.ask({"helpers": {name: call.as_dict() for name, call in calls.items()}}, timeout)
        if answered is None:
            exit_code, stdout, stderr = self.command.finish(b"", timeout)
            return {name: (exit_code or 1, stdout, stderr) for name in calls}
        return {name: (result["exit_code"], result["stdout"].encode("utf-8", "surrogateescape"),
                       result["stderr"].encode("utf-8", "surrogateescape"))
                for name, result in answered["helpers"].items()}

    def start_run(self, run_dir: str, spec: dict[str, Any], files: dict[str, str], timeout: float) -> dict:
        """Write FILES ({name: text}, the provenance) and run.json, start the driver in the
        background; its answer once the driver holds the lock (or could not), or which file
        could not be written ({"not_written": {"path", "error"}}: nothing started)."""
        started = self.ask({"run_dir": run_dir, "run": spec, "beside_run": files}, timeout)
        if started is None:
            exit_code, _, _ = self.command.finish(b"", timeout)
            raise RemoteStepFailed(f"could not start the run on the server (status {exit_code})",
                                   "check the `activate` and `python` settings (python -m evalkit doctor)")
        return started

    def submit_run(self, run_dir: str, spec: dict[str, Any], files: dict[str, str], submit: dict[str, Any],
                   timeout: float) -> dict:
        """Write FILES and run.json (as start_run) and hand the driver to a scheduler: SUBMIT's
        script, run by its argv (sbatch); {"exit_code", "stdout", "stderr"} of that command."""
        submitted = self.ask({"run_dir": run_dir, "run": spec, "beside_run": files, "submit": submit}, timeout)
        if submitted is None:
            exit_code, _, _ = self.command.finish(b"", timeout)
            raise RemoteStepFailed(f"could not submit the run on the server (status {exit_code})",
                                   "check the `activate` and `python` settings (python -m evalkit doctor)")
        return submitted

    def abandon(self) -> None:
        """Not needed (any more): it sees EOF and ends; a started run goes on without it."""
        self.command.abandon()


class _Early:
    """A starter's command begun in a thread of its own (opening its channel and its exec each
    wait for the server), by (connection, command); taken once, by the run it starts."""

    _begun: dict[tuple[int, str], "_Early"] = {}
    _lock = threading.Lock()

    def __init__(self, connection: Connection, settings: Settings, command: str) -> None:
        self.connection = connection  # held: while it waits, no other connection can take its id
        self.generation = connection.generation
        self.settings = settings
        self.command: PendingCommand | None = None
        self.starter: Starter | None = None  # once it looked (its scripts made current)
        self.is_dropped = False  # its connection closed before a run took it
        self.thread = threading.Thread(target=self._start, args=(command,), daemon=True)

    @classmethod
    def begin(cls, connection: Connection, settings: Settings) -> None:
        command = start_command(settings)
        early = cls(connection, settings, command)
        with cls._lock:
            if cls._begun.setdefault((id(connection), command), early) is not early:
                return  # one is begun already
        connection.when_closed(lambda: early._drop(command))
        early.thread.start()

    def _start(self, command: str) -> None:
        try:
            started = self.connection.start_command(command)
        except EvalkitError:
            return  # the link failed: taking it begins the starter anew, which says why if it fails again
        with self._lock:
            if not self.is_dropped:
                self.command = started
                return
        started.abandon()  # its connection closed while the command was starting

    def _drop(self, command: str) -> None:
        """Its connection is closing: untaken, it is forgotten and its command ended (the
        bootstrap sees EOF and exits), so no login shell and python stay on the server, nor the
        connection in _begun. Taken, it is the run's, and nothing is done. Never waits on the
        starting thread: the connection's close may be what it waits for."""
        with self._lock:
            if self._begun.get((id(self.connection), command)) is not self:
                return
            del self._begun[(id(self.connection), command)]
            self.is_dropped = True
            started, self.command = self.command, None
        if started is not None:
            started.abandon()

    @classmethod
    def find(cls, connection: Connection, command: str) -> "_Early | None":
        with cls._lock:
            return cls._begun.get((id(connection), command))

    @classmethod
    def take(cls, connection: Connection, command: str) -> "_Early | None":
        with cls._lock:
            return cls._begun.pop((id(connection), command), None)

    def looking_starter(self) -> Starter | None:
        """Its Starter, made to check every script a run of these settings may need (the run's
        task is not known yet); None when its command could not start."""
        if self.starter is None and self._started() is not None:
            self.starter = Starter(self.command, self.settings, scripts_for(self.settings, extra=ANY_TASK))
        return self.starter

    def starter_for(self, scripts: list[str]) -> Starter | None:
        """Its Starter for a run that needs SCRIPTS; None when its command could not start, or
        its look made current scripts that do not cover SCRIPTS (a run's settings not the look's)."""
        if self.starter is not None:
            if self.starter.covers(scripts):
                return self.starter
            self.starter.abandon()
            return None
        command = self._started()
        return Starter(command, self.settings, scripts) if command is not None else None

    def _started(self) -> PendingCommand | None:
        self.thread.join()  # bounded: opening a channel waits connect_timeout at most
        if self.command is not None and self.generation != self.connection.generation:
            self.command.abandon()  # the connection was opened anew since (a reconnect)
            self.command = None
        return self.command


def _line(message: dict) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"


def start_command(settings: Settings, job_args: tuple[str, ...] = START_ARGS) -> str:
    """job.py start through the bootstrap, given inline: that first makes evalkit's scripts on
    the server current from stdin, then job.py reads the run, starts its driver in the
    background, every stream redirected so the run does not depend on the SSH session."""
    return in_server_env(settings, through_bootstrap(script_call(settings, JOB_RUNNER, job_args), bootstrap_source()))
