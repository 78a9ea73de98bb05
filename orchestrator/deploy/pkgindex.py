"""The package index the controller's wheel cache downloads from (a company's private mirror),
and how pip is told about it without a secret ever reaching argv, a log, an event or an error.

    PackageIndex(url="https://pypi.internal/simple", extra_urls=(...,),
                 ca_bundle=Path("/etc/orchestrator/index-ca.pem"),
                 credentials_file=Path("/etc/orchestrator/index.netrc"))

Given by the daemon's config (`[index]`, configs/orchestrator.toml) or `orchestrator deploy
--index-url ...`. pip runs with `--isolated` (no user or site config, no `PIP_*` variables),
so the index reaches it only through the arguments built here:
- the URLs as `--index-url`/`--extra-index-url`; a URL carrying `user:password@` is refused
  (argv is readable by every user through `ps`, and pip echoes URLs in its errors);
- the credentials as a netrc file (`machine HOST login USER password SECRET`), handed to pip
  through the `NETRC` environment variable (an environment is readable by its owner only).
  pip looks the index's host up in it (pip/_internal/network/auth.py: netrc after the URL and
  before keyring). The file must not be readable by group or others, as OpenSSH requires of a
  key, and must parse as netrc; a parse error names the file and line, never the text;
- the CA bundle as `--cert`.
`redact(text)` removes every login and password the file holds from text pip printed, before
that text goes into an error: defence in depth, since pip should never print them.
"""

from __future__ import annotations

import netrc
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.errors import InvalidInput

_KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR",
             "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
             "https_proxy", "no_proxy", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class PackageIndex:
    url: str | None = None                  # None: pip's default (pypi.org)
    extra_urls: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    credentials_file: Path | None = None    # netrc format, mode 0600
    _secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for url in (self.url, *self.extra_urls):
            if url is not None:
                check_url(url)
        if self.ca_bundle is not None and not self.ca_bundle.is_file():
            raise InvalidInput(f"index CA bundle {self.ca_bundle} is not a file")
        if self.credentials_file is not None:
            object.__setattr__(self, "_secrets", _read_secrets(self.credentials_file))

    @property
    def configured(self) -> bool:
        return bool(self.url or self.extra_urls)

    def pip_args(self) -> list[str]:
        argv: list[str] = []
        if self.url:
            argv += ["--index-url", self.url]
        for url in self.extra_urls:
            argv += ["--extra-index-url", url]
        if self.ca_bundle is not None:
            argv += ["--cert", str(self.ca_bundle)]
        return argv

    def pip_env(self, home: Path) -> dict[str, str]:
        """pip's whole environment: no user or site config may change what is fetched
        (--isolated covers pip's own), plus where the credentials are, never the credentials."""
        env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV}
        env.setdefault("HOME", str(home))
        if self.credentials_file is not None:
            env["NETRC"] = str(self.credentials_file)
        return env

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "****")
        return text

    def describe(self) -> str:
        return " and ".join(filter(None, (self.url, *self.extra_urls))) or "pip's default index"


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"index URL {url!r} must be an http(s):// URL with a host")
    if parts.username or parts.password:
        raise InvalidInput(
            f"index URL for {parts.hostname} carries credentials: put them in a netrc file"
            " named by the index's credentials_file (mode 0600), never in the URL")


def _read_secrets(path: Path) -> tuple[str, ...]:
    """Refuse a credentials file others may read or that is not netrc; return what to redact."""
    try:
        info = path.stat()
    except OSError as exc:
        raise InvalidInput(f"index credentials file {path} cannot be read: {exc.strerror}"
                           ) from None
    if not stat.S_ISREG(info.st_mode):
        raise InvalidInput(f"index credentials file {path} is not a regular file")
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        raise InvalidInput(
            f"index credentials file {path} has mode {stat.S_IMODE(info.st_mode):04o}: it must"
            f" not be accessible by group or others; run `chmod 600 {path}`")
    try:
        parsed = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:  # its message quotes the file's text: not shown
        raise InvalidInput(f"index credentials file {path} is not a netrc file (line"
                           f" {exc.lineno})") from None
    except OSError as exc:
        raise InvalidInput(f"index credentials file {path} cannot be read: {exc.strerror}"
                           ) from None
    secrets = {s for login, account, password in parsed.hosts.values()
               for s in (login, account, password) if s}
    return tuple(secrets)
