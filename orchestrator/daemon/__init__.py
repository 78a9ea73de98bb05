"""The daemon: its process, API, store, events, configuration, metrics and the runners that do a
deployment's work."""
