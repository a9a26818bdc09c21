"""A run's folder and the files in it, as the driver, the starter and cancel write and read them
(standard library only; imported by job.py and the modules beside it).

Files are written so that nothing planted in their folders redirects them: each through a new
temporary file (O_EXCL, O_NOFOLLOW) renamed over its name (atomic.py), each stream opened
O_NOFOLLOW. A run's folder keeps a reserve (RESERVE_BYTES in RESERVE) for its own last files,
given up for them on a full disk. The run's final state, status.json, is written once (claim_end):
of two writers exactly one wins.
"""
import errno
import json
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # atomic.py beside it, however it was started
import atomic  # noqa: E402  (evalkit uploads both)

FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
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



def read_text(path):
    """PATH's text (undecodable bytes kept as surrogates), or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None
