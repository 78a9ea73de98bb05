# Run the warmup runner, then remove its request and pid files, keeping the runner's exit status:
#
#     env REQ=<request.json> sh warmup_run.sh timeout -s KILL <s> <venv python> -E warmup.py REQ
#
# Shipped in the tools bundle beside warmup.py (orchestrator/hosts/warmup.py builds the command).
# The clean-up is in the same command because a separate one would cost one more SSH round trip
# per host; a runner killed before it reported is cleaned by the `kill-group` op instead.
"$@"; rc=$?; rm -f "$REQ" "$REQ.pid"; exit $rc
