"""Re-verification of serving releases: the pure findings, the audit of one host, the schedule."""
