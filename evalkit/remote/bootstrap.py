"""Make evalkit's server-side scripts current, then run one of them (standard library only).

Run as `python -c "$(this file)" FOLDER SCRIPT ARGS...` in the client's first command, so no
script need be on the server yet. From stdin, one JSON line each:

  {"files": {NAME: SHA256}}   answer {"missing": [NAME...]}: those absent from FOLDER or different;
  {"files": {NAME: TEXT}}     (only when some were missing) write them, each atomically, and
                              answer {"written": [NAME...]}. A line the client sent before it
                              knew what was missing (SCRIPT's first message) is kept for SCRIPT.

Then FOLDER/SCRIPT runs in this process with ARGS, reading the rest of stdin. An unchanged
evalkit so costs no upload at all, and a new one only what changed.

FOLDER is made 0o700, and one that others could write (group- or world-writable, or another
user's) is refused before anything is written or run, with the answer {"refused": WHAT, "fix":
HOW}: whoever can write there could run anything as this user through evalkit.

It runs before any of evalkit's scripts is known to be on the server, so it shares no code with
them (job.py speaks the same JSON lines).
"""
import hashlib
import json
import os
import pwd
import runpy
import secrets
import shlex
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
    """DATA to PATH through a new file beside it: O_EXCL and O_NOFOLLOW, so nothing planted at its
    name redirects the write; the rename replaces a symlink at PATH rather than follow it."""
    temporary = f"{path}.tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(temporary, flags, 0o600), "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def refusal(folder):
    """Why evalkit must not run code from FOLDER ((what, fix)), or None: another user who can
    write it, or owns it, could put anything there."""
    info = os.stat(folder)
    me, quoted = user_name(os.getuid()), shlex.quote(folder)
    if info.st_uid != os.getuid():
        return (f"evalkit will not run its scripts from {folder}: it belongs to {user_name(info.st_uid)}, not to {me}",
                f"on the server, remove it (rm -r {quoted}) or make it yours (as root: chown -R {me} {quoted})")
    if info.st_mode & 0o022:
        return (f"evalkit will not run its scripts from {folder}: other users can write to it "
                f"(mode {info.st_mode & 0o7777:o})",
                f"on the server: chmod go-w {quoted} (and check that its scripts are evalkit's)")
    return None


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def make_folder(path, mode=0o700):
    """`mkdir -p PATH`, PATH itself MODE (see refusal), the folders above it 0o755 (each less the
    umask)."""
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        make_folder(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass


class Replaying:
    """stdin, with LINES read before their reader ran given back to it first."""

    def __init__(self, lines, stream):
        self.lines, self.stream = lines, stream

    def readline(self):
        return self.lines.pop(0) if self.lines else self.stream.readline()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(folder, script, args):
    wanted = read_request()
    if wanted is None:
        return  # the client went away before it said anything
    make_folder(folder)  # then checked, whoever made it
    refused = refusal(folder)
    if refused:
        answer({"refused": refused[0], "fix": refused[1]})
        sys.exit(1)
    missing = sorted(name for name, digest in wanted["files"].items()
                     if not is_current(os.path.join(folder, name), digest))
    answer({"missing": missing})
    if missing:
        held, sent = [], read_request()
        while sent is not None and "files" not in sent:  # SCRIPT's first message, sent with the digests
            held.append(sent)
            sent = read_request()
        if sent is None:
            return
        for name in missing:
            write_atomically(os.path.join(folder, name), sent["files"][name].encode("utf-8"))
        answer({"written": missing})
        sys.stdin = Replaying([json.dumps(message) + "\n" for message in held], sys.stdin)
    sys.argv = [os.path.join(folder, script), *args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
