"""Make evalkit's server-side scripts current, then run one of them (standard library only).

Run as `python -c "$(this file)" FOLDER SCRIPT ARGS...` in the client's first command, so no
script need be on the server yet. From stdin, one JSON line each:

  {"files": {NAME: SHA256}}   answer {"missing": [NAME...]}: those absent from FOLDER or different;
  {"files": {NAME: TEXT}}     (only when some were missing) write them, each atomically, and
                              answer {"written": [NAME...]}. A line the client sent before it
                              knew what was missing (SCRIPT's first message) is kept for SCRIPT.

Then FOLDER/SCRIPT runs in this process with ARGS, reading the rest of stdin. An unchanged
evalkit so costs no upload at all, and a new one only what changed.

  python -c "$(this file)" --expect '{NAME: SHA256}' --refusal-to FILE FOLDER SCRIPT ARGS...
runs FOLDER/SCRIPT only if each NAME in FOLDER has that SHA-256 (a Slurm job, hours after its
submission: the scripts it was submitted with), else writes the refusal to FILE (the run's
status.json: state "unsafe") and exits 1. Nothing is read from stdin.

FOLDER is made 0o700, and one that others could write (group- or world-writable, another user's,
or a symlink) is refused before anything is written or run, with the answer {"refused": WHAT,
"fix": HOW}: whoever can write there could run anything as this user through evalkit. A FOLDER
that cannot be made or written (permission, a full disk) is refused the same way. FOLDER is
opened once (O_DIRECTORY, O_NOFOLLOW) and checked by fstat on that descriptor; everything after
goes through the descriptor (dir_fd=; the script runs as /proc/self/fd/N/SCRIPT, N inherited by
the driver it execs), never through FOLDER's name again: whoever can write FOLDER's parent may
swap the folder after the check, and swaps nothing evalkit reads or runs. The script runs by a
/proc/self/fd path rather than from bytes read here because what it starts needs a path too: the
driver job.py execs by its own path, the helpers it runs, and atomic.py it imports beside it.

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
import time

MARKER = "EVALKIT-JOB "


def read_request():
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def answer(result):
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def digest_of(folder_fd, name):
    """The SHA-256 of NAME in the folder open at FOLDER_FD (None when it cannot be read)."""
    try:
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd), "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def write_atomically(folder_fd, name, data):
    """DATA to NAME in the folder open at FOLDER_FD through a new file beside it: O_EXCL and
    O_NOFOLLOW, so nothing planted at its name redirects the write; the rename replaces a symlink
    at NAME rather than follow it."""
    temporary = f"{name}.tmp-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(temporary, flags, 0o600, dir_fd=folder_fd), "wb") as handle:
        handle.write(data)
    os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)


def open_folder(folder):
    """FOLDER opened once, as it is now (its descriptor), or (what, fix) when it is a symlink or
    no folder: every later check and use goes through this descriptor."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        quoted = shlex.quote(folder)
        return (f"evalkit will not run its scripts from {folder}: it is a symlink or not a folder ({exc.strerror})",
                f"on the server, look at what it points to, then remove it (rm {quoted}); evalkit makes it anew")


def refusal(folder, folder_fd):
    """Why evalkit must not run code from FOLDER, open at FOLDER_FD ((what, fix)), or None:
    another user who can write it, or owns it, could put anything there."""
    info = os.fstat(folder_fd)
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


def checked_folder(folder):
    """FOLDER's descriptor once it passed refusal(), else (what, fix)."""
    opened = open_folder(folder)
    if isinstance(opened, tuple):
        return opened
    refused = refusal(folder, opened)
    if refused:
        os.close(opened)
        return refused
    return opened


def run_through(folder_fd, script, args, folder):
    """SCRIPT of the folder open at FOLDER_FD, run in this process with ARGS by the descriptor's
    path (/proc/self/fd/N/SCRIPT), which names that folder however FOLDER is swapped meanwhile;
    N is left open across exec, for the driver job.py execs by its own path."""
    os.set_inheritable(folder_fd, True)
    through = f"/proc/self/fd/{folder_fd}"
    sys.argv = [f"{through}/{script}", *args]
    sys.path.insert(0, through)  # what it imports beside it (atomic.py), from the same folder
    runpy.run_path(sys.argv[0], init_globals={"SCRIPTS_FOLDER": (folder, through)}, run_name="__main__")


class Replaying:
    """stdin, with LINES read before their reader ran given back to it first."""

    def __init__(self, lines, stream):
        self.lines, self.stream = lines, stream

    def readline(self):
        return self.lines.pop(0) if self.lines else self.stream.readline()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def unwritable(folder, exc):
    """(what, fix) when FOLDER cannot be made or written (permission, a full disk)."""
    return (f"evalkit cannot write its scripts to {folder} on the server: {exc.strerror or exc}",
            "set remote_output_dir (or --datapath) to a directory you can write there, or free space on its disk")


def refuse(what_fix):
    answer({"refused": what_fix[0], "fix": what_fix[1]})
    sys.exit(1)


def main(folder, script, args):
    wanted = read_request()
    if wanted is None:
        return  # the client went away before it said anything
    try:
        make_folder(folder)  # then checked, whoever made it
    except OSError as exc:
        refuse(unwritable(folder, exc))
    folder_fd = checked_folder(folder)
    if isinstance(folder_fd, tuple):
        refuse(folder_fd)
    missing = sorted(name for name, digest in wanted["files"].items() if digest_of(folder_fd, name) != digest)
    answer({"missing": missing})
    if missing:
        held, sent = [], read_request()
        # SCRIPT's first message, sent with the digests (no message of job.py's has a "files" key)
        while sent is not None and "files" not in sent:
            held.append(sent)
            sent = read_request()
        if sent is None:
            return
        try:
            for name in missing:
                write_atomically(folder_fd, name, sent["files"][name].encode("utf-8"))
        except OSError as exc:
            refuse(unwritable(folder, exc))
        answer({"written": missing})
        sys.stdin = Replaying([json.dumps(message) + "\n" for message in held], sys.stdin)
    run_through(folder_fd, script, args, folder)


def run_expected(expected, refusal_file, folder, script, args):
    """A Slurm job's start: SCRIPT, if FOLDER passes refusal() and holds the scripts EXPECTED
    ({NAME: SHA256}, as submitted); else the refusal in REFUSAL_FILE (status.json) and exit 1."""
    folder_fd = checked_folder(folder)
    if not isinstance(folder_fd, tuple):
        changed = sorted(name for name, digest in expected.items() if digest_of(folder_fd, name) != digest)
        if not changed:
            run_through(folder_fd, script, args, folder)
            return
        folder_fd = (f"evalkit will not run {', '.join(changed)} in {folder}: changed since this Slurm job was "
                     "submitted (another evalkit version uploaded its own, or someone edited it)",
                     "evaluate again: evalkit uploads its scripts anew and submits a new job")
    what, fix = folder_fd
    print(f"error: {what}\nfix: {fix}", file=sys.stderr, flush=True)
    write_refusal(refusal_file, what, fix)
    sys.exit(1)


def write_refusal(path, what, fix):
    """The run's end, state "unsafe", unless one is there already (a cancel came first)."""
    record = {"state": "unsafe", "error": what, "fix": fix, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600), "w") as out:
            out.write(json.dumps(record))
    except OSError:
        pass  # its folder is not writable, or the run has ended already: the job's output says it


if __name__ == "__main__":
    if sys.argv[1] == "--expect":
        run_expected(json.loads(sys.argv[2]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:])
    else:
        main(sys.argv[1], sys.argv[2], sys.argv[3:])
