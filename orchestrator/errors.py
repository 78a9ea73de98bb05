"""The orchestrator's exceptions: one root, a few well-named branches.

Every error carries what the user needs to act (host, step, file, line, field) and maps to a
stable exit code and HTTP status. The exit codes are the CLI's contract with scripts, the same
for every command (docs/operations.md "Exit codes" has the table per command):

    0  ok
    1  internal error (a bug: please report)
    2  invalid input, or a request the current state refuses; nothing was changed
    3  a deployment or a host failed (rolled back where it had switched)
    4  unreachable or degraded: a host or the daemon did not answer, a host verified degraded,
       `wait --timeout` passed first; a script may retry later

When one command meets several outcomes (one host failed, another unreachable), `worst()` picks
the code, in the order of `SEVERITY`.

    OrchestratorError                    exit 1, HTTP 500: a bug; please report
    ├── InvalidInput                     exit 2, HTTP 400: bad spec, inventory, lock, path, flag
    │   ├── SpecError                    names file, line and field
    │   ├── NotFound                     exit 2, HTTP 404: unknown deployment or host
    │   └── PayloadTooLarge              exit 2, HTTP 413: a submitted bundle over the limit
    ├── HostError                        exit 3, HTTP 502: something about one host
    │   ├── HostUnreachable              exit 4: connect/auth/banner failed or connection lost
    │   ├── HostKeyRejected              unknown or changed host key (fingerprint in message)
    │   ├── CommandFailed                non-zero exit; carries command, exit code, output tail
    │   ├── HealthCheckFailed            a service stayed unhealthy: why first, then the check
    │   ├── CommandTimeout               command exceeded its deadline
    │   ├── OutputTooLarge               command output exceeded the cap
    │   ├── BadHostOutput                output that is not what the script must print
    │   ├── FileTransferFailed           SFTP put/get refused (no such file, permission, disk)
    │   ├── HostOpFailed                 (hostops.py) a host-side op refused; `.kind`, `.details`
    │   ├── StepFailed                   (steps/__init__.py) a step's own check refused the host
    │   └── DeployLocked                 (hosts/hostlock.py) the app is being deployed there
    ├── TestbedError                     exit 1: the local testbed could not start or stop
    ├── Conflict                         exit 2, HTTP 409: refused by the current state
    │   └── InvalidTransition            a state change the state machine forbids
    ├── DaemonError                      exit 1: the daemon could not start, or is not running
    │   ├── DaemonUnavailable            exit 4: nothing answers on the socket
    │   ├── StateDirLocked               another daemon owns the state dir
    │   ├── StoreCorrupt                 the SQLite store failed its integrity check
    │   └── StoreUnavailable             the PostgreSQL store does not answer (down, partition)
    └── DeploymentFailed                 exit 3: a deployment failed (rolled back where it switched)
        └── WheelFetchFailed             (wheelcache.py) the locked wheels could not be had

The four classes marked with a module live beside the code that raises them, since they carry
that module's types; they are part of this tree all the same.
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_DEPLOY_FAILED = 3
EXIT_UNREACHABLE = 4

#: Most severe first: a bug hides everything, a refusal comes before any host was touched, a
#: failure needs a person where an unreachable host may only need a retry.
SEVERITY = (EXIT_INTERNAL, EXIT_INVALID, EXIT_DEPLOY_FAILED, EXIT_UNREACHABLE, EXIT_OK)


def worst(codes: Iterable[int]) -> int:
    """The exit code of a command with several outcomes: the most severe (`SEVERITY`); 0 for
    none. An unknown code counts as internal."""
    rank = {code: i for i, code in enumerate(SEVERITY)}
    return min(codes, key=lambda c: rank.get(c, 0), default=EXIT_OK)


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises on purpose."""

    exit_code = EXIT_INTERNAL
    http_status = 500


class InvalidInput(OrchestratorError):
    """The user gave us something we refuse; nothing was changed anywhere."""

    exit_code = EXIT_INVALID
    http_status = 400


class SpecError(InvalidInput):
    """A problem at a precise place in a file: `file:line: field: message`."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [p for p in (where, field) if p]
        super().__init__(": ".join([*parts, message]))


class HostError(OrchestratorError):
    """Something went wrong on, or on the way to, one host."""

    exit_code = EXIT_DEPLOY_FAILED
    http_status = 502

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        self.reason = message
        super().__init__(f"{host}: {message}")


class HostUnreachable(HostError):
    exit_code = EXIT_UNREACHABLE
    #: Set where the cause may pass (a refused, reset or timed-out connect) and another attempt
    #: is worth it (core/retry.py); never for an authentication failure or a host-key refusal.
    transient = False


class HostKeyRejected(HostError):
    pass


class CommandFailed(HostError):
    """A remote command exited non-zero; like invoke's UnexpectedExit it carries the result."""

    def __init__(self, host: str, command: str, exit_code: int, stdout: str, stderr: str) -> None:
        self.command, self.exit_status = command, exit_code
        self.stdout, self.stderr = stdout, stderr
        tail = "\n".join((stderr or stdout).strip().splitlines()[-10:])
        super().__init__(host, f"command exited {exit_code}: {command}\n{tail}".rstrip())


class HealthCheckFailed(HostError):
    """A service did not pass its health check within its budget. The reason leads the message
    (what the check saw last), the check follows: a one-line view shows why, not a long URL."""

    def __init__(self, host: str, check: str, why: str) -> None:
        self.check = check
        super().__init__(host, f"{why} (health {check})")


class CommandTimeout(HostError):
    pass


class OutputTooLarge(HostError):
    pass


class BadHostOutput(HostError):
    pass


class FileTransferFailed(HostError):
    """The connection is fine but the host refused the file operation."""


class TestbedError(OrchestratorError):
    __test__ = False  # not a pytest test class


class DeploymentFailed(OrchestratorError):
    exit_code = EXIT_DEPLOY_FAILED
    http_status = 409


class NotFound(InvalidInput):
    http_status = 404


class PayloadTooLarge(InvalidInput):
    http_status = 413


class Conflict(OrchestratorError):
    """The request is valid but the current state refuses it (e.g. an app already rolling out)."""

    exit_code = EXIT_INVALID
    http_status = 409


class InvalidTransition(Conflict):
    pass


class DaemonError(OrchestratorError):
    http_status = 503


class DaemonUnavailable(DaemonError):
    exit_code = EXIT_UNREACHABLE


class StateDirLocked(DaemonError):
    pass


class StoreCorrupt(DaemonError):
    pass


class StoreUnavailable(DaemonError):
    """The database does not answer: a daemon stops acting on hosts until it does."""

    exit_code = EXIT_UNREACHABLE
