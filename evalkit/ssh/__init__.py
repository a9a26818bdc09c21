"""SSH for evalkit: resolve an ssh alias, connect, run commands, transfer files.

This package is the only importer of paramiko (through _paramiko, which keeps invoke out).
Modules: resolve (alias -> Target, as the user's `ssh` would), connection (Connection: hops,
SFTP; RequestCounter: what it asked of the server), known_hosts (the host key check, as ssh
reads known_hosts), identities (which keys to offer, as ssh picks them), command
(PendingCommand: one command's channel, its input and output).
"""
from .command import OutputSink, PendingCommand
from .connection import Connection, RequestCounter
from .known_hosts import fingerprint
from .resolve import Target, default_ssh_config, resolve_target

__all__ = ["Connection", "OutputSink", "PendingCommand", "RequestCounter", "Target", "default_ssh_config",
           "fingerprint", "resolve_target"]
