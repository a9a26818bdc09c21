"""Make evalkit's server-side scripts current, then run one of them (standard library only).

Run as `python -c "$(this file)" FOLDER SCRIPT ARGS...` in the client's first command, so no
script need be on the server yet. From stdin, one JSON line each:

  {"files": {NAME: SHA256}}   answer {"missing": [NAME...]}: those absent from FOLDER or different;
  {"files": {NAME: TEXT}}     (only when some were missing) write them, each atomically, and
                              answer {"written": [NAME...]}.

Then FOLDER/SCRIPT runs in this process with ARGS, reading the rest of stdin. An unchanged
evalkit so costs no upload at all, and a new one only what changed. It runs before any of
evalkit's scripts is known to be on the server, so it shares no code with them (job.py speaks
the same JSON lines).
"""
import hashlib
import json
import os
import runpy
import sys

MARKER = "EVALKIT-JOB "


def read_request():
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def answer(result):
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def is_current(path, digest):
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest() == digest
    except OSError:
        return False


def write_atomically(path, data):
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def main(folder, script, args):
    wanted = read_request()
    if wanted is None:
        return  # the client went away before it said anything
    missing = sorted(name for name, digest in wanted["files"].items()
                     if not is_current(os.path.join(folder, name), digest))
    answer({"missing": missing})
    if missing:
        sent = read_request()
        if sent is None:
            return
        os.makedirs(folder, exist_ok=True)
        for name in missing:
            write_atomically(os.path.join(folder, name), sent["files"][name].encode("utf-8"))
        answer({"written": missing})
    sys.argv = [os.path.join(folder, script), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
