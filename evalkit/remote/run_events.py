"""A run's event stream (standard library only; imported by job.py beside it): what the client
follows, on the starter's channel or, after a reconnect, `job.py events`.

The run's files, read here (free: no network between) and pushed as one EVALKIT-EVENT JSON line
per event on stdout, in order:
  {"e": "started", "step": N}
  {"e": "output", "step": N, "stream": "stdout"|"stderr", "at": OFFSET, "b64": BYTES}
  {"e": "ended", "step": N, "code": EXIT, "seconds": S}
  {"e": "end", "status": status.json}                       the run ended (once)
  {"e": "beat", "alive": BOOL}                              every BEAT_EVERY s: the driver lives
  {"e": "wrote", "path": P[, "error": TEXT, "errno": N]}   a write the client asked for
  {"e": "bundle", "files": {P: {"mtime", "b64"} | null}}    the files the client asked for
Steps are followed in order from a Position (the step, and the bytes of each stream already
had), so a client that reconnects (`job.py events`) misses nothing and gets nothing twice.
stdin takes one JSON line per request: {"write": {"path", "data", "mode"}} (the run's manifest),
{"collect": [PATH, ...]} (the results, at the end); its EOF ends the stream.
"""
import base64
import json
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the modules beside it, however it was started
from run_files import has_ended, make_dirs, read_json, read_text, write_atomically  # noqa: E402  (uploaded with job.py)
from run_processes import is_alive  # noqa: E402

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
