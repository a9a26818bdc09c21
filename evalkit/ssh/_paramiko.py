"""paramiko, imported without invoke; the ssh package's other modules take it from here."""
from __future__ import annotations

import importlib
import sys
from types import ModuleType


def import_paramiko_without_invoke() -> ModuleType:
    """Import paramiko while `import invoke` fails, then leave sys.modules as it was.

    paramiko imports invoke at once, and invoke brings asyncio and unittest.mock with it: about
    40 ms of every run's start. paramiko needs invoke only to run a `Match exec` line of an ssh
    config that paramiko parses itself, and works without it. Here OpenSSH parses the config
    (`ssh -G`); the fallback that lets paramiko parse it calls lend_invoke() first. A program
    that has imported invoke already keeps it and paramiko gets it as usual.
    """
    is_blocked = "invoke" not in sys.modules
    if is_blocked:
        sys.modules["invoke"] = None  # type: ignore[assignment]  # makes `import invoke` raise ImportError
    try:
        return importlib.import_module("paramiko")
    finally:
        if is_blocked:
            del sys.modules["invoke"]  # no placeholder left: a later `import invoke` works


paramiko = import_paramiko_without_invoke()


def lend_invoke() -> None:
    """Give paramiko's config parser invoke now, for the `Match exec` lines it may run."""
    if getattr(paramiko.config, "invoke", None) is None:
        try:
            paramiko.config.invoke = importlib.import_module("invoke")
        except ImportError:
            pass  # paramiko names the missing module itself when a Match exec line needs it
