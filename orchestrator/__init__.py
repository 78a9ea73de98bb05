"""GPU-aware model deployment orchestrator: deploys models to GPU hosts over SSH."""

__version__ = "0.1.0"
