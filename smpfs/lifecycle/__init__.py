"""Layer 3, lifecycle: the SMP database (smp.db), storage folders, computers,
associations, Request/Release State Store, retention, the access table and the
audit log. Knows nothing of FUSE; imports store, crypto and the base modules."""
