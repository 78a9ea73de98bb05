"""The web UI: static pages (ui/static/, package data, no build step) served by the daemon on
its own listeners, the views they read (views.py) and the live stream of a deployment as
server-sent events (sse.py); routes.py mounts them. docs/operations.md "The web UI"."""
