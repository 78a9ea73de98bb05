"""A private index for the wheel cache (deploy/pkgindex.py), against a real one: the fixture
wheels served as a PEP 503 simple index by Python's http.server behind HTTP basic auth. Real
`pip download`; the credentials come from a 0600 netrc file and must never show up in pip's
argv, the cache's files, the errors or the daemon's config errors."""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.retry import RetryPolicy
from orchestrator.daemon.config import config_from_dict
from orchestrator.deploy.pkgindex import PackageIndex
from orchestrator.deploy.wheelcache import WheelCache, WheelFetchFailed, platform_tags
from orchestrator.errors import InvalidInput, SpecError

SMALL = Path(__file__).resolve().parent / "fixtures" / "locks" / "small"
LOCK = SMALL / "requirements.lock"
TAGS = platform_tags("x86_64", "glibc 2.36")
LOGIN, SECRET = "ci-robot", "s3cret-9f2c7e1d"
FAST = RetryPolicy(attempts=3, base_s=0.05, cap_s=0.1)


class Index:
    """A PEP 503 simple index of the fixture wheelhouse, basic auth, requests recorded."""

    def __init__(self, root: Path) -> None:
        for wheel in sorted((SMALL / "wheelhouse").glob("*.whl")):
            name = wheel.name.split("-")[0].lower().replace("_", "-")
            page = root / "simple" / name
            page.mkdir(parents=True, exist_ok=True)
            (root / "files").mkdir(exist_ok=True)
            (root / "files" / wheel.name).write_bytes(wheel.read_bytes())
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            (page / "index.html").write_text(
                f'<html><body><a href="../../files/{wheel.name}#sha256={digest}">'
                f"{wheel.name}</a></body></html>\n")
        self.requests: list[tuple[str, bool]] = []  # (path, authorised)
        self.missing_first = 0  # answer 404 to this many page requests (a mirror still syncing)
        index = self
        expected = "Basic " + base64.b64encode(f"{LOGIN}:{SECRET}".encode()).decode()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kw: object) -> None:
                super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

            def do_GET(self) -> None:
                ok = self.headers.get("Authorization") == expected
                index.requests.append((self.path, ok))
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="private"')
                    self.end_headers()
                    return
                if index.missing_first > 0 and self.path.startswith("/simple/"):
                    index.missing_first -= 1
                    self.send_error(404)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass  # recorded in `requests`

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    served = Index(tmp_path / "served")
    try:
        yield served
    finally:
        served.close()


def netrc(tmp_path: Path, password: str = SECRET, mode: int = 0o600) -> Path:
    path = tmp_path / "index.netrc"
    path.write_text(f"machine 127.0.0.1 login {LOGIN} password {password}\n")
    path.chmod(mode)
    return path


def everything_in(root: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_the_cache_fills_from_a_private_index_with_credentials_from_a_file(
        tmp_path: Path, index: Index) -> None:
    creds = netrc(tmp_path)
    cache = WheelCache(tmp_path / "cache", index=PackageIndex(url=index.url,
                                                             credentials_file=creds))
    wheels = cache.fill(LOCK, "3.11", TAGS)
    assert len(wheels) == 2
    assert any(path.startswith("/files/") and ok for path, ok in index.requests)
    argv = cache._pip_argv(tmp_path / "x.lock", tmp_path / "dl", "3.11", TAGS)
    assert SECRET not in " ".join(argv) and LOGIN not in " ".join(argv)  # what `ps` shows
    assert cache.index.pip_env(tmp_path)["NETRC"] == str(creds)
    assert SECRET not in everything_in(tmp_path / "cache")


def test_wrong_credentials_fail_without_showing_them_and_are_retried(
        tmp_path: Path, index: Index) -> None:
    creds = netrc(tmp_path, password="wrong-" + SECRET)
    cache = WheelCache(tmp_path / "cache", retry_policy=FAST,
                       index=PackageIndex(url=index.url, credentials_file=creds))
    with pytest.raises(WheelFetchFailed) as caught:
        cache.fill(LOCK, "3.11", TAGS)
    message = str(caught.value)
    assert f"from {index.url} failed" in message
    assert SECRET not in message and LOGIN not in message
    assert all(not ok for _, ok in index.requests)
    pages = [p for p, _ in index.requests if p.startswith("/simple/")]
    assert len(set(pages)) >= 1 and len(pages) >= 3 * len(set(pages))  # 3 attempts each


def test_a_flaky_index_is_retried_until_it_answers(tmp_path: Path, index: Index) -> None:
    index.missing_first = 1  # the first page request of the first attempt: 404
    cache = WheelCache(tmp_path / "cache", retry_policy=FAST,
                       index=PackageIndex(url=index.url, credentials_file=netrc(tmp_path)))
    assert len(cache.fill(LOCK, "3.11", TAGS)) == 2
    assert index.missing_first == 0


def test_no_retry_past_the_deadline(tmp_path: Path, index: Index) -> None:
    index.missing_first = 1
    cache = WheelCache(tmp_path / "cache", retry_policy=RetryPolicy(attempts=5, base_s=5.0),
                       index=PackageIndex(url=index.url, credentials_file=netrc(tmp_path)))
    with pytest.raises(WheelFetchFailed):
        cache.fill(LOCK, "3.11", TAGS, remaining=lambda: 0.0)


def test_credentials_in_a_url_or_a_readable_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="carries credentials") as caught:
        PackageIndex(url=f"https://{LOGIN}:{SECRET}@pypi.internal/simple/")
    assert SECRET not in str(caught.value)
    with pytest.raises(InvalidInput, match="chmod 600"):
        PackageIndex(url="https://pypi.internal/simple/",
                     credentials_file=netrc(tmp_path, mode=0o644))
    bad = tmp_path / "bad.netrc"
    bad.write_text(f"machine x login {LOGIN} password\n{SECRET} {SECRET}\n")
    bad.chmod(0o600)
    with pytest.raises(InvalidInput, match="is not a netrc file") as caught:
        PackageIndex(credentials_file=bad)
    assert SECRET not in str(caught.value)


def test_the_daemon_config_takes_an_index(tmp_path: Path) -> None:
    creds = netrc(tmp_path)
    config = config_from_dict(
        {"index": {"url": "https://pypi.internal/simple/", "extra_urls": ["https://b/simple/"],
                   "credentials_file": "index.netrc"}},
        file="orchestrator.toml", base=tmp_path, env={})
    assert config.index is not None and config.index.credentials_file == creds
    assert config.index.pip_args() == ["--index-url", "https://pypi.internal/simple/",
                                       "--extra-index-url", "https://b/simple/"]
    creds.chmod(0o640)
    with pytest.raises(SpecError, match=r"orchestrator\.toml: index: .*chmod 600"):
        config_from_dict({"index": {"credentials_file": "index.netrc"}},
                         file="orchestrator.toml", base=tmp_path, env={})
    with pytest.raises(SpecError, match=r"index\.token"):
        config_from_dict({"index": {"token": SECRET}}, file="orchestrator.toml",
                         base=tmp_path, env={})
