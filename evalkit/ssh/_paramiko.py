"""paramiko, imported without invoke or importlib.metadata; the ssh package's other modules take
it from here."""
from __future__ import annotations

import importlib
import importlib.util
import os
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
        with _versions_read_from_dist_info():
            return importlib.import_module("paramiko")
    finally:
        if is_blocked:
            del sys.modules["invoke"]  # no placeholder left: a later `import invoke` works


class _DistInfoVersions(ModuleType):
    """importlib.metadata's stand-in while paramiko is imported. paramiko reads its own version
    from it at import (`metadata.version("paramiko")`, for its SSH banner), and importlib.metadata
    brings email, csv and zipfile with it: ~15 ms of every start. The version is the one the
    `NAME-VERSION.dist-info` folder beside the package names, as pip installed it; anything else
    (no such folder, another function asked for) goes to the real module."""

    def __init__(self) -> None:
        super().__init__("importlib.metadata")

    def version(self, name: str) -> str:
        spec = importlib.util.find_spec(name)
        folder = os.path.dirname(os.path.dirname(spec.origin)) if spec and spec.origin else None
        prefix = f"{name}-"
        found = [entry[len(prefix):-len(".dist-info")] for entry in (os.listdir(folder) if folder else ())
                 if entry.startswith(prefix) and entry.endswith(".dist-info")]
        return found[0] if len(found) == 1 else self._real().version(name)

    def __getattr__(self, attribute: str):
        return getattr(self._real(), attribute)

    def _real(self) -> ModuleType:
        if sys.modules.get("importlib.metadata") is self:
            del sys.modules["importlib.metadata"]
        return importlib.import_module("importlib.metadata")


class _versions_read_from_dist_info:
    """While inside: `from importlib import metadata` gives _DistInfoVersions, unless the real
    module is loaded already."""

    def __enter__(self) -> None:
        self.stand_in = None if "importlib.metadata" in sys.modules else _DistInfoVersions()
        if self.stand_in is not None:
            sys.modules["importlib.metadata"] = self.stand_in

    def __exit__(self, *_) -> None:
        if self.stand_in is not None and sys.modules.get("importlib.metadata") is self.stand_in:
            del sys.modules["importlib.metadata"]


paramiko = import_paramiko_without_invoke()


def lend_invoke() -> None:
    """Give paramiko's config parser invoke now, for the `Match exec` lines it may run."""
    if getattr(paramiko.config, "invoke", None) is None:
        try:
            paramiko.config.invoke = importlib.import_module("invoke")
        except ImportError:
            pass  # paramiko names the missing module itself when a Match exec line needs it
