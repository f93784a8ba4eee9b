"""smpfs: a Configuration Manager State Migration Point as a FUSE filesystem."""
__version__ = "0.1.0"
