"""Files written on the server so that nothing planted in their folder redirects them (standard
library only). Uploaded beside job.py, query_hits.py and zeroshot.py, which import it;
list_checkpoints.py is sent inline and bootstrap.py runs before any script is there, so each keeps
its own writer.

A file is made whole under a new temporary name beside its own (O_EXCL: never a file planted
there; O_NOFOLLOW: never through a symlink), then renamed over its name, which replaces whatever
is there, a symlink too, and follows nothing: a reader polling the name sees no file or all of it.
"""
import os
import secrets

NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC  # a symlink at the name: ELOOP


def write_new(path, text, mode=0o600):
    """TEXT into a new file at PATH (O_EXCL), closed (its buffer written) on return."""
    with open(os.open(path, NEW_FILE | os.O_EXCL, mode), "w", encoding="utf-8") as handle:
        handle.write(text)


def write_atomically(path, text, mode=0o600, write=write_new):
    """TEXT to PATH through WRITE(temporary, TEXT, MODE) beside it, then renamed over PATH; the
    temporary file is gone if anything fails."""
    temporary = f"{path}.tmp-{secrets.token_hex(8)}"
    try:
        write(temporary, text, mode)  # closed before the rename
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass  # never created: the open itself failed
        raise
