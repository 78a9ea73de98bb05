"""The pure core: specs, inventories, lock files, host facts, preflight, compatibility data, the
verify gates, releases, hashes and states. Nothing here opens a connection or starts a thread."""
