"""`make bench`: each module here defines `run() -> None`, which measures one area on the local
testbed and prints its figures. Speed targets are checked here, never in timed unit tests."""
