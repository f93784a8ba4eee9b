"""Layer 1, crypto: keys, key wrapping, and the sealing of blocks, names and xattrs.

Imports nothing of smpfs but :mod:`smpfs.errors`."""
