"""The SSH edge: the only package that imports paramiko.

`connect(host, options)` opens one authenticated connection and returns an `SshTransport`
(the `orchestrator.hosts.transport.Transport` interface). Every paramiko and socket exception is
turned into a `HostError` subclass here, so nothing above this module sees paramiko.

The route to a host (route.py) is the inventory's values completed from an opt-in ssh_config
(HostName, Port, User, IdentityFile, IdentitiesOnly, ProxyJump chains); each bastion's successor
is reached through a `direct-tcpip` channel of the previous hop (connect.py). A refused, reset or
timed-out connect is retried with backoff (core/retry.py); an auth or host-key refusal never is.

Host keys of every hop, bastions included, are checked against the orchestrator's own
known_hosts file only: never the user's ~/.ssh/known_hosts, never auto-added. An unknown key is
refused with its SHA256 fingerprint and the command that trusts it; a changed key is refused
with both fingerprints. `path_to`, `fetch_host_key` and `append_known_host` are what
`orchestrator trust` uses to make trusting explicit, hop by hop.

Each command runs in the session sshd starts with setsid(), after a first line naming its
process group: on a timeout or an output overflow that whole group is killed (over a second
channel) before the channel is closed. If the connection itself drops, a watcher started with
the command kills the group within a second. Either way nothing is left running on the host.

A host is untrusted: files read back are bounded (regular files only, a size cap, a deadline:
sftp.py), and weak algorithms are never offered (`SshOptions.disabled_algorithms`, from
`WEAK_SSH_ALGORITHMS` less the inventory's `ssh.legacy_algorithms`). A private key readable by
group or others is refused as OpenSSH refuses it (`check_identity_file`).
"""

from orchestrator.hosts.ssh.connect import connect, path_to
from orchestrator.hosts.ssh.known_hosts import (
    HostKey,
    append_known_host,
    fetch_host_key,
    fingerprint,
    known_host_keys,
    known_hosts_name,
    remove_known_host,
)
from orchestrator.hosts.ssh.options import (
    HostAddress,
    SshOptions,
    default_known_hosts,
    trust_command,
)
from orchestrator.hosts.ssh.route import Hop, Route, resolve
from orchestrator.hosts.ssh.session import SshTransport

__all__ = ["Hop", "HostAddress", "HostKey", "Route", "SshOptions", "SshTransport",
           "append_known_host", "connect", "default_known_hosts", "fetch_host_key", "fingerprint",
           "known_host_keys", "known_hosts_name", "path_to", "remove_known_host", "resolve",
           "trust_command"]
