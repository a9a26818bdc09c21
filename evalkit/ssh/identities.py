"""Which keys a hop offers its server, in OpenSSH's order, honouring IdentitiesOnly and IdentityAgent.

OpenSSH offers the agent's keys that match an IdentityFile first, then the agent's other keys
(not with `IdentitiesOnly yes`), then the IdentityFile keys the agent does not hold. Offering
every key of the agent, as paramiko's `allow_agent` does, shows them all to the server and can
use up its MaxAuthTries before the right key comes.
"""
from __future__ import annotations

import base64
import binascii
import os
import socket
from pathlib import Path

from ._paramiko import paramiko
from .resolve import Target

_strategy = paramiko.auth_strategy


def open_agent(target: Target) -> paramiko.agent.AgentSSH | None:
    """The agent TARGET may use, or None (`IdentityAgent none`, or no agent listening)."""
    where = target.identity_agent
    if where == "none":
        return None
    if where in (None, "SSH_AUTH_SOCK"):
        return paramiko.Agent()  # $SSH_AUTH_SOCK; no keys when it is unset
    path = os.environ.get(where[1:], "") if where.startswith("$") else where
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None  # ssh goes on without the agent too
    agent = paramiko.agent.AgentSSH()
    agent._connect(sock)  # paramiko's Agent only reads $SSH_AUTH_SOCK; this is its own step
    return agent


def public_blob(path: str) -> bytes | None:
    """The public key of the IdentityFile PATH: from PATH.pub, else from an unencrypted PATH."""
    try:
        fields = Path(path + ".pub").read_text().split()
        return base64.b64decode(fields[1], validate=True)
    except (OSError, IndexError, binascii.Error):
        pass
    try:
        return paramiko.PKey.from_path(path).asbytes()
    except (paramiko.SSHException, OSError, ValueError):
        return None  # encrypted without a .pub: it can still be offered, not matched


class _KeyFile(_strategy.PrivateKey):
    """A private key file, opened only when its turn comes."""

    def __init__(self, username: str, path: str) -> None:
        super().__init__(username=username)
        self.path = path

    def authenticate(self, transport):
        self.pkey = paramiko.PKey.from_path(self.path)
        return super().authenticate(transport)


class OpenSshIdentities(_strategy.AuthStrategy):
    """The keys of one hop, offered one by one until the server accepts one."""

    def __init__(self, target: Target, agent: paramiko.agent.AgentSSH | None) -> None:
        super().__init__(ssh_config=None)
        self.target = target
        self.agent_keys = list(agent.get_keys()) if agent is not None else []

    def get_sources(self):
        user = self.target.user
        files = {path: public_blob(path) for path in self.target.identity_files if os.path.exists(path)}
        chosen, others = [], []
        for key in self.agent_keys:
            path = next((p for p, blob in files.items() if blob == key.asbytes()), None)
            if path is not None:
                del files[path]  # the agent signs for it: no passphrase needed
                chosen.append(_strategy.InMemoryPrivateKey(user, key))
            elif not self.target.identities_only:
                others.append(_strategy.InMemoryPrivateKey(user, key))
        yield from chosen
        yield from others
        for path in files:
            yield _KeyFile(user, path)
