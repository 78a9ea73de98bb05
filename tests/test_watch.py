"""The specs_dir watcher (daemon/watch.py) on real files: a FIFO dropped into specs_dir, or named
by a spec, never blocks a scan; a symlinked spec digests the files next to its target; and an
unchanged model is not read again (one stat per file per scan)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from orchestrator.daemon.config import DaemonConfig
from orchestrator.daemon.events import EventHub
from orchestrator.daemon.runners.base import EchoRunner
from orchestrator.daemon.service import Service
from orchestrator.daemon.store import open_store
from orchestrator.daemon.watch import Digests, SpecWatcher, changes, spec_digest
from tests.specs import LOCK, stub_spec

T = TypeVar("T")
DEADLINE_S = 20.0


def within_deadline(fn: Callable[[], T]) -> T:
    """fn() in a daemon thread: a hang fails the test instead of blocking the run forever."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    assert not thread.is_alive(), f"still blocked after {DEADLINE_S}s"
    return out[0]


def spec_in(specs: Path, name: str) -> Path:
    """specs/<name>.yaml naming files in specs/<name>/ (the spec's paths are relative to it)."""
    folder = specs / name
    spec = stub_spec(folder, ["h1"], name=name, lock=LOCK, gpu=None)
    text = spec.read_text()
    for field in ("model.joblib", "requirements.lock", "golden.npz"):
        text = text.replace(f": {field}", f": {name}/{field}")
    spec.unlink()
    (specs / f"{name}.yaml").write_text(text)
    return specs / f"{name}.yaml"


def test_a_fifo_spec_in_specs_dir_does_not_block_the_scan(tmp_path: Path) -> None:
    good = spec_in(tmp_path, "good")
    os.mkfifo(tmp_path / "pipe.yaml")
    found = within_deadline(lambda: changes(tmp_path, {}))
    by_name = {c.path.name: c.digest for c in found}
    assert set(by_name) == {"good.yaml", "pipe.yaml"}
    assert by_name["pipe.yaml"].startswith("error:")
    assert by_name["good.yaml"] == spec_digest(good)


def test_a_fifo_named_by_a_spec_is_not_read(tmp_path: Path) -> None:
    spec = spec_in(tmp_path, "app")
    (tmp_path / "app" / "model.joblib").unlink()
    os.mkfifo(tmp_path / "app" / "model.joblib")
    within_deadline(lambda: spec_digest(spec))
    (tmp_path / "app" / "model.joblib").unlink()
    (tmp_path / "app" / "model.joblib").mkdir()
    os.mkfifo(tmp_path / "app" / "model.joblib" / "inside")
    within_deadline(lambda: spec_digest(spec))


def test_a_symlinked_spec_digests_the_files_next_to_its_target(tmp_path: Path) -> None:
    real = spec_in(tmp_path / "repo", "app")
    (tmp_path / "specs").mkdir()
    os.symlink(real, tmp_path / "specs" / "app.yaml")
    before = spec_digest(tmp_path / "specs" / "app.yaml")
    assert before == spec_digest(real)
    (tmp_path / "repo" / "app" / "model.joblib").write_bytes(b"a new model")
    assert spec_digest(tmp_path / "specs" / "app.yaml") != before


def test_unchanged_files_are_not_hashed_again(tmp_path: Path) -> None:
    spec = spec_in(tmp_path, "app")
    model = tmp_path / "app" / "model.joblib"
    digests = Digests()
    first = digests.digest(spec)
    for _ in range(5):
        assert digests.digest(spec) == first
    assert digests.computed == 1
    # same size, mtime put back: the ctime still tells
    st = os.stat(model)
    model.write_bytes(b"B" * st.st_size)
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = digests.digest(spec)
    assert second != first and second == spec_digest(spec) and digests.computed == 2
    (tmp_path / "app" / "extra").write_bytes(b"not named: no change")
    assert digests.digest(spec) == second and digests.computed == 2
    spec.write_text(spec.read_text() + "# a comment\n")
    assert digests.digest(spec) != second and digests.computed == 3
    spec.unlink()
    assert changes(tmp_path, {}, digests) == []
    assert digests._seen == {}  # forgotten once it leaves specs_dir


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    config = DaemonConfig(state_dir=tmp_path / "state", socket=tmp_path / "o.sock",
                          runner="orchestrator.daemon.runners.base:EchoRunner")
    store = open_store(config.store_path)
    hub = EventHub(store, config.logs_dir)
    svc = Service(config, store, hub, EchoRunner(config))
    svc.start()
    yield svc
    svc.stop(10)
    hub.close()
    store.close()


def test_the_watcher_submits_the_good_spec_and_records_the_fifo(tmp_path: Path,
                                                                service: Service) -> None:
    specs = tmp_path / "specs"
    spec_in(specs, "good")
    os.mkfifo(specs / "pipe.yaml")
    watcher = SpecWatcher(service, specs)
    created = within_deadline(watcher.scan)
    assert len(created) == 1
    watched = service.store.watched()
    assert set(watched) == {str(specs / "good.yaml"), str(specs / "pipe.yaml")}
    assert within_deadline(watcher.scan) == []  # nothing changed: nothing again
    assert watcher.digests.computed == 1  # the good spec's files were read once
