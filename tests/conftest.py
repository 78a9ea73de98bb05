"""Shared fixtures: one testbed of real sshd hosts with simulated GPUs for the whole run.

    def test_x(testbed):                  # Testbed: tb-01..tb-08, see TESTBED_PROFILES
        inv = load_inventory(testbed.inventory_path)
    def test_y(host_by_profile):          # first host of a profile, e.g. host_by_profile("t4")
    def test_z(testbed):
        with testbed.profile("tb-01", "mismatch"): ...   # restored on exit

Tests must leave every host's profile as they found it (use `testbed.profile(...)`); the
`host_by_profile` fixture also restores any profile a test changed, as a safety net.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orchestrator.testbed import Testbed, TestbedHost

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
