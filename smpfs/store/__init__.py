"""Layer 2, store: one encrypted state store on disk (format, tree, blocks,
durability, fsck, recovery). Knows nothing of FUSE or of the SMP's lifecycle;
imports only :mod:`smpfs.crypto` and the base modules."""
