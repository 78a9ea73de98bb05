"""hostops' wheels pulled by the host from an operator's mirror (`environment.wheel_source`):
`wheels-fetch` downloads each wheel the host's cache lacks straight from the mirror, hashes it
as it writes it and renames into the cache only a file whose sha256 is the locked one. The
controller sends names and hashes, never the bytes. Shipped beside hostops.py (stdlib only,
3.9+).

The mirror is trusted for nothing but availability: a file is kept only if its sha256 is the
one the controller took from the lock, and never more than the size the controller knows it
to have is written, so a hostile or stale mirror can fail a deployment but cannot change what
is installed or fill the disk. Two layouts:
- `index`: a PEP 503 (HTML) or PEP 691 (JSON) simple index (pypiserver, devpi, Artifactory,
  Nexus, `python -m http.server` over a PEP 503 tree): the project's page
  `<url>/<normalized name>/` lists the file, by its sha256 fragment or its filename;
- `directory`: a plain HTTP directory holding the wheel files: `<url>/<filename>`;
- `peer`: another host of the same rollout serving its own wheel cache (peerserve.py,
  `environment.wheel_peers`): `<url>/<sha256>.whl`, the URL carrying the rollout's token.

A mirror the host cannot reach, or that answers a status other than 200, fails with
`mirror-unreachable` naming the URL and the status (or the connection error).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse

# http.client, urllib.request and html.parser are imported where they are used: together they
# were ~20 ms of CPU of every host agent's start (it imports every hostops_* module), and most
# deployments fetch nothing.
from hostops_fs import HASH_RE, OpError, checked_arg, fsync_dir, orch_path, root_arg

WHEEL_RE = re.compile(r"^[A-Za-z0-9_.+!-]+\.whl$")
LAYOUTS = ("index", "directory", "peer")
MAX_WHEEL_BYTES = 8 << 30
MAX_PAGE_BYTES = 16 << 20
_CHUNK = 1 << 20
_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
           "text/html;q=0.1")


def _wheels(args):
    wheels = checked_arg(args, "wheels")
    if not isinstance(wheels, list):
        raise OpError("bad-args", "wheels must be a list of {sha, filename, size}")
    for w in wheels:
        if not (isinstance(w, dict) and isinstance(w.get("sha"), str) and HASH_RE.match(w["sha"])
                and isinstance(w.get("filename"), str) and WHEEL_RE.match(w["filename"])
                and isinstance(w.get("size"), int) and not isinstance(w["size"], bool)
                and 0 <= w["size"] <= MAX_WHEEL_BYTES):
            raise OpError("bad-args", f"bad wheel entry {w!r}: want {{sha, filename, size}}")
    return wheels


def _source(args):
    url = checked_arg(args, "url")
    layout = checked_arg(args, "layout", default="index", required=False)
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.username or parts.password:
        raise OpError("bad-args", f"url must be an http(s) URL without credentials: {url!r}")
    if layout not in LAYOUTS:
        raise OpError("bad-args", f"layout must be one of {', '.join(LAYOUTS)}: {layout!r}")
    return url if url.endswith("/") else url + "/", layout


def _open(url, timeout, accept="*/*"):
    """The response to GET url, or OpError(mirror-unreachable) naming the URL and status."""
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept": accept,
                                                   "User-Agent": "orchestrator-host"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # _source allowed http(s) only
    except urllib.error.HTTPError as exc:
        exc.close()
        raise OpError("mirror-unreachable", f"wheel mirror answered {exc.code} {exc.reason} for "
                      f"{url}", url=url, status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise OpError("mirror-unreachable", f"cannot reach the wheel mirror at {url}: {reason}",
                      url=url, status=None) from None
    if response.status != 200:
        response.close()
        raise OpError("mirror-unreachable", f"wheel mirror answered {response.status} for {url}",
                      url=url, status=response.status)
    return response


def _anchors(page):
    """The anchors of a PEP 503 page: [(href, text)]."""
    from html.parser import HTMLParser

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self._href, self._text = [], None, []

        def handle_starttag(self, tag, attrs):
            if tag == "a":
                self._href, self._text = dict(attrs).get("href"), []

        def handle_data(self, data):
            if self._href is not None:
                self._text.append(data)

        def handle_endtag(self, tag):
            if tag == "a" and self._href is not None:
                self.links.append((self._href, "".join(self._text).strip()))
                self._href = None

    parser = Links()
    parser.feed(page)
    return parser.links


def _project_links(page_url, timeout):
    """[(absolute url, filename, sha256 or None)] of a project's simple-index page."""
    with _open(page_url, timeout, _ACCEPT) as response:
        body = response.read(MAX_PAGE_BYTES + 1)
        kind = response.headers.get("Content-Type", "")
    if len(body) > MAX_PAGE_BYTES:
        raise OpError("mirror-unreachable", f"index page {page_url} is over {MAX_PAGE_BYTES} "
                      "bytes; not read", url=page_url, status=200)
    found = []
    if "json" in kind:
        try:
            files = json.loads(body.decode("utf-8")).get("files", [])
            for f in files:
                found.append((urllib.parse.urljoin(page_url, f["url"]), f["filename"],
                              (f.get("hashes") or {}).get("sha256")))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OpError("mirror-unreachable", f"index page {page_url} is not PEP 691 JSON",
                          url=page_url, status=200) from None
        return found
    for href, text in _anchors(body.decode("utf-8", "replace")):
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rpartition("/")[2]) or text
        sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
        found.append((url, name, sha))
    return found


def _wheel_url(base, layout, wheel, pages, timeout):
    if layout == "directory":
        return urllib.parse.urljoin(base, urllib.parse.quote(wheel["filename"]))
    if layout == "peer":  # a peer's cache is content-addressed: the name is the hash
        return urllib.parse.urljoin(base, wheel["sha"] + ".whl")
    project = re.sub(r"[-_.]+", "-", wheel["filename"].split("-")[0]).lower()
    page = urllib.parse.urljoin(base, project + "/")
    if page not in pages:
        pages[page] = _project_links(page, timeout)
    for url, name, sha in pages[page]:
        if sha == wheel["sha"] or (sha is None and name == wheel["filename"]):
            return url
    raise OpError("mirror-unreachable", f"the index page {page} lists no {wheel['filename']} "
                  f"with sha256 {wheel['sha']}", url=page, status=200)


def _download(url, part, size, timeout):
    """sha256 of what was written, at most `size` bytes (None: more came, nothing kept)."""
    import http.client

    digest = hashlib.sha256()
    written = 0
    with _open(url, timeout) as response, open(part, "wb") as out:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                # The server went away mid-file (a peer whose own stream failed is stopped
                # at once): the same kind as a refused connection, so the puller falls back.
                raise OpError("mirror-unreachable", f"the wheel mirror at {url} broke off "
                              f"after {written} bytes: {exc!r}", url=url, status=None) from None
            if not chunk:
                break
            written += len(chunk)
            if written > size:
                break
            digest.update(chunk)
            out.write(chunk)
    if written > size:
        os.unlink(part)
        return None
    return digest.hexdigest()


def op_wheels_fetch(args):
    """url, layout, wheels [{sha, filename, size}], [timeout_s] -> verified, bytes."""
    base, layout = _source(args)
    wheels = _wheels(args)
    timeout = float(args.get("timeout_s", 60))
    cache = orch_path(root_arg(args), "wheels")
    os.makedirs(cache, exist_ok=True)
    pages: dict[str, list[tuple[str, str, str | None]]] = {}
    verified: list[str] = []
    bad: list[dict[str, str]] = []
    fetched = 0
    for wheel in wheels:
        final = os.path.join(cache, wheel["sha"] + ".whl")
        if os.path.isfile(final):
            verified.append(wheel["sha"])
            continue
        url = _wheel_url(base, layout, wheel, pages, timeout)
        part = f"{final}.part-{os.getpid()}"
        try:
            actual = _download(url, part, wheel["size"], timeout)
        except BaseException:
            if os.path.exists(part):
                os.unlink(part)
            raise
        if actual == wheel["sha"]:
            os.replace(part, final)
            verified.append(wheel["sha"])
            fetched += wheel["size"]
            continue
        if actual is not None:
            os.unlink(part)
        bad.append({"expected": wheel["sha"], "actual": actual or f"more than {wheel['size']} "
                    "bytes", "url": url})
    fsync_dir(cache)
    if bad:
        what = "; ".join(f"{b['url']} gave {b['actual']}, the lock wants {b['expected']}"
                         for b in bad)
        raise OpError("wheel-hash-mismatch", f"wheel from the mirror refused: {what}",
                      verified=verified, bad=bad, missing=[])
    return {"verified": verified, "bytes": fetched}


OPS = {"wheels-fetch": op_wheels_fetch}
