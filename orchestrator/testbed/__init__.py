"""A local testbed of real SSH hosts with simulated NVIDIA GPUs (see testbed.py)."""

from __future__ import annotations

from orchestrator.testbed.layout import TestbedHost
from orchestrator.testbed.profiles import PROFILES
from orchestrator.testbed.testbed import Testbed

__all__ = ["PROFILES", "Testbed", "TestbedHost"]
