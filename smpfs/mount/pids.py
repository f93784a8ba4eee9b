"""Process states the mount code and the test plugin both need (no FUSE import)."""


def is_zombie(pid: int) -> bool:
    """Exited but not yet reaped (by init, for a daemon started in the background)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
