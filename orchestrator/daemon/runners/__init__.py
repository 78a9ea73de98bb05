"""What a deployment does to hosts, behind one protocol (`base.Runner`): the deploy rollout, the
probe-only dry run, and the echo runner of tests."""
