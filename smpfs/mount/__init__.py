"""Layer 4, mount: the FUSE operations, write-back, the daemon, its control
socket and the mount(8) helper. Imports every layer below."""
