"""A private PostgreSQL cluster for tests and benchmarks: Debian's postgresql package, in a
temporary directory on a free port, run as the `postgres` user when started as root (PostgreSQL
refuses root), else as the current user; reached over its Unix socket only. Each user gets its
own database (`Cluster.database`).

    cluster = Cluster.start()      # tests/conftest.py's `postgres` fixture, orchestrator/bench
    url = cluster.database()       # postgresql://...: `store = url` in a daemon's config
    cluster.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path


def binaries() -> Path | None:
    """The newest installed server's bin dir, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class Cluster:
    dir: Path
    port: int
    bin: Path
    user: str
    options: str = ""  # the server's, given again by `start_again`

    @property
    def socket_dir(self) -> Path:
        return self.dir / "run"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def _as_owner(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout,
                              check=True, cwd=self.dir)

    @classmethod
    def start(cls) -> Cluster:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (make system-deps installs it)")
        user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        base = Path(tempfile.mkdtemp(prefix="orch-pg-"))
        base.chmod(0o755)
        (base / "run").mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam(user)
            for path in (base, base / "run"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cluster = cls(base, _free_port(), bin_dir, user)
        cluster._as_owner(str(bin_dir / "initdb"), "-D", str(base / "data"), "-A", "trust",
                          "-U", user, "--no-sync", "-E", "UTF8")
        # fsync off: a test cluster, thrown away at the end; max_connections for three daemons
        # of many threads each.
        options = (f"-p {cluster.port} -k {base / 'run'} -c listen_addresses='' -c fsync=off "
                   "-c max_connections=300")
        cluster.options = options
        cluster.start_again()
        return cluster

    def start_again(self) -> None:
        """Start the server (after `pg_ctl("stop", ...)`: a database outage in a test)."""
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o",
                       self.options, "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                       "start")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def pg_ctl(self, *args: str) -> None:
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-t", "60",
                       *args)

    def database(self) -> str:
        """A new, empty database: its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)
