"""Deploying a spec: the per-host pipeline engine, the playbook, the steps, the fleet rollout and
`plan` (what a rollout would do, changing nothing)."""
