"""Reaching hosts and what runs there: the transport and its one SSH implementation, the pool, the
typed host operations, the host-side scripts (`remote/`) and how they are shipped."""
