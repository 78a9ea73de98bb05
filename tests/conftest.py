"""Shared fixtures: one testbed of real sshd hosts with simulated GPUs for the whole run.

    def test_x(testbed):                  # Testbed: tb-01..tb-08, see TESTBED_PROFILES
        inv = load_inventory(testbed.inventory_path)
    def test_y(host_by_profile):          # first host of a profile, e.g. host_by_profile("t4")
    def test_z(testbed):
        with testbed.profile("tb-01", "mismatch"): ...   # restored on exit
    def test_d(tmp_path, daemons):        # a real daemon, stopped after the test
        daemon = daemons(write_config(tmp_path, ECHO))   # tests/daemons.py
    def test_m(models_dir, inventory, pool):   # v1/v2 joblib models; the testbed over SSH
    FLEET_PROFILES = ("h100", "t4")            # a module's own testbed: `fleet`, and
    def test_f(fleet, fleet_daemon): ...       # the deploy daemon over it (module-scoped)

Tests must leave every host's profile as they found it (use `testbed.profile(...)`); the
`host_by_profile` fixture also restores any profile a test changed, as a safety net.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.core.inventory import Inventory, load_inventory
from orchestrator.hosts.pool import Pool
from orchestrator.hosts.ssh import SshOptions
from orchestrator.testbed import Testbed, TestbedHost
from orchestrator.testbed.postgres import Cluster
from tests.daemons import DEPLOY, Daemon, start, write_config
from tests.specs import WHEEL_CACHE

TESTBED_PROFILES = (
    "h100", "t4", "old-driver", "no-driver", "no-gpu", "mismatch", "h100", "h100",
)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    root = tmp_path_factory.mktemp("testbed")
    tb = Testbed.up(root, len(TESTBED_PROFILES), TESTBED_PROFILES)
    try:
        yield tb
    finally:
        Testbed.down(root)


@pytest.fixture
def host_by_profile(testbed: Testbed) -> Iterator[Callable[[str], TestbedHost]]:
    before = {h.name: h.profile for h in Testbed.load(testbed.dir).hosts}

    def find(profile: str) -> TestbedHost:
        for h in Testbed.load(testbed.dir).hosts:  # current profiles, whoever changed them
            if h.profile == profile:
                return h
        raise LookupError(f"no testbed host has profile {profile!r}")

    yield find
    for h in Testbed.load(testbed.dir).hosts:
        if h.profile != before[h.name]:
            testbed.set_profile(h.name, before[h.name])


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    """`daemons(config, env=None, wait=True)` starts a daemon; each is stopped at teardown."""
    started: list[Daemon] = []

    def make(config: Path, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        daemon = start(config, env, wait)
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture(scope="module")
def fleet(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A testbed of the module's own, for tests that roll out over all its hosts from a fresh
    start: one host per entry of the module's `FLEET_PROFILES` (e.g. `("h100",) * 6`), up for
    the module, down after it."""
    profiles = tuple(getattr(request.module, "FLEET_PROFILES", ()))
    if not profiles:
        pytest.fail(f"{request.module.__name__} uses `fleet` without FLEET_PROFILES")
    root = tmp_path_factory.mktemp("fleet")
    tb = Testbed.up(root, len(profiles), profiles)
    try:
        yield tb
    finally:
        Testbed.down(root)


@pytest.fixture(scope="module")
def fleet_daemon(fleet: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The real daemon with the deploy runner over `fleet` (its inventory, known_hosts and key;
    wheels from the test wheel cache), for the module."""
    base = tmp_path_factory.mktemp("fleetdaemon")
    config = write_config(base, f'inventory = "{fleet.inventory_path}"\n'
                                f'known_hosts = "{fleet.known_hosts_path}"\n'
                                f'identity = "{fleet.identity_path}"\n' + DEPLOY)
    d = start(config, {"ORCHESTRATOR_WHEEL_CACHE": str(WHEEL_CACHE)})
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real scikit-learn model in two versions, each with its own golden file: v1
    (model.joblib + golden.npz) and v2 (changed.joblib + golden-v2.npz, one weight changed);
    inputs.npz is their shared input. Read-only: tests copy what they deploy."""
    from orchestrator.core import golden
    from tests import models  # scikit-learn: imported only by the tests that use it

    d = tmp_path_factory.mktemp("models")
    models.make_joblib(d, changed_weight=True)
    golden.record(d / "changed.joblib", "joblib", d / "inputs.npz", d / "golden-v2.npz",
                  method="predict_proba")
    return d


@pytest.fixture(scope="module")
def inventory(testbed: Testbed) -> Inventory:
    """The session testbed's inventory, loaded once per module."""
    return load_inventory(testbed.inventory_path)


@pytest.fixture(scope="module")
def pool(inventory: Inventory) -> Iterator[Pool]:
    """SSH connections to the testbed's hosts, shared by one module's tests."""
    with Pool(SshOptions.for_inventory(inventory), max_connections=8) as p:
        yield p


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A private PostgreSQL cluster for the whole run (orchestrator/testbed/postgres.py),
    started on first use."""
    cluster = Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """What `open_store` opens, once per backend: a SQLite file, then a fresh PostgreSQL
    database of the session's cluster."""
    if request.param == "sqlite":
        return tmp_path / "s.db"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.database()
