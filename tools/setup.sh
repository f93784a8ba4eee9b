#!/usr/bin/env bash
# Shared set-up for tools/demo.sh and tools/test.sh, which source it; run on
# its own (./tools/setup.sh, as root) it only installs.
#
# On a fresh Debian machine, as root, it makes everything smpfs needs exist,
# and does nothing it does not have to on a machine that already has it:
#   1. Debian packages: fuse3 (fusermount3), libfuse3-dev + pkg-config (to
#      build pyfuse3), rsync, attr, tar (used by the tests), samba + smbclient +
#      libnss-wrapper (the SMB service and its tests); a C compiler and
#      Python headers if missing. `apt-get update` runs first, only when
#      something has to be installed.
#   2. /dev/fuse (tries `modprobe fuse` when it is missing).
#   3. A virtualenv in .venv made with whatever `python3` is on PATH, and
#      `pip install -e '.[test]'` (again only when pyproject.toml changed).
#
# After `smpfs_setup`, $SMPFS_ROOT is the checkout and $SMPFS_VENV the venv.
# Environment knobs: SMPFS_FORCE_APT=1 (always apt-get update + install),
# SMPFS_FORCE_PIP=1 (always pip install).

SMPFS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SMPFS_VENV="$SMPFS_ROOT/.venv"
SMPFS_APT_PACKAGES=(fuse3 libfuse3-dev pkg-config rsync attr tar python3-venv samba smbclient libnss-wrapper
                    fio stress-ng wimtools util-linux)

_smpfs_say() { printf '==> %s\n' "$*" >&2; }
_smpfs_die() { printf 'smpfs setup: %s\n' "$*" >&2; exit 1; }

_smpfs_missing_packages() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    printf '%s\n' "${missing[@]}"
}

_smpfs_apt() {
    local wanted=("${SMPFS_APT_PACKAGES[@]}") missing
    command -v cc >/dev/null 2>&1 || wanted+=(gcc libc6-dev)
    if ! command -v python3 >/dev/null 2>&1; then
        wanted+=(python3 python3-venv python3-dev)
    elif [ "$(command -v python3)" = /usr/bin/python3 ]; then
        # Debian's own python3 needs its venv and headers packaged separately
        wanted+=(python3-venv python3-dev)
    fi
    if [ "${SMPFS_FORCE_APT:-0}" = 1 ]; then
        missing="${wanted[*]}"
    else
        missing="$(_smpfs_missing_packages "${wanted[@]}" | tr '\n' ' ')"
    fi
    missing="${missing%% }"
    [ -n "${missing// /}" ] || return 0
    [ "$(id -u)" = 0 ] || _smpfs_die "Debian packages missing ($missing): run this as root"
    command -v apt-get >/dev/null 2>&1 || _smpfs_die "Debian packages missing ($missing) and no apt-get here"
    _smpfs_say "installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

_smpfs_fuse() {
    if [ ! -e /dev/fuse ]; then
        command -v modprobe >/dev/null 2>&1 && modprobe fuse 2>/dev/null || true
    fi
    [ -e /dev/fuse ] || _smpfs_die "/dev/fuse is missing: smpfs needs FUSE (a machine or container with /dev/fuse)"
    command -v fusermount3 >/dev/null 2>&1 || _smpfs_die "fusermount3 is missing (apt-get install fuse3)"
}

_smpfs_venv() {
    local py stamp want
    if [ ! -x "$SMPFS_VENV/bin/python" ] || ! "$SMPFS_VENV/bin/python" -c '' 2>/dev/null; then
        py="$(command -v python3)" || _smpfs_die "python3 is not on PATH"
        _smpfs_say "creating virtualenv .venv with $py ($("$py" --version 2>&1))"
        rm -rf "$SMPFS_VENV"
        "$py" -m venv "$SMPFS_VENV"
    fi
    stamp="$SMPFS_VENV/.smpfs-installed"
    want="$( (cat "$SMPFS_ROOT/pyproject.toml"; "$SMPFS_VENV/bin/python" --version) | sha256sum | cut -d' ' -f1)"
    if [ "${SMPFS_FORCE_PIP:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$SMPFS_VENV/bin/python" -c 'import smpfs, pyfuse3, pytest' 2>/dev/null; then
        return 0
    fi
    _smpfs_say "installing smpfs and its test dependencies into .venv (pip install -e '.[test]')"
    (cd "$SMPFS_ROOT" && "$SMPFS_VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]')
    printf '%s\n' "$want" >"$stamp"
}

# For a user who is not root (the unit tier): a venv this user owns, made with
# a python3 this user can execute, holding smpfs and its test dependencies.
smpfs_user_venv() {
    if [ -x "$SMPFS_VENV/bin/python" ] && "$SMPFS_VENV/bin/python" -c "import smpfs, pytest" 2>/dev/null; then
        return 0
    fi
    local py cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/smpfs"
    SMPFS_VENV="$cache/venv-$(id -u)"
    if ! "$SMPFS_VENV/bin/python" -c 'import smpfs, pytest, cryptography' 2>/dev/null; then
        py=/usr/bin/python3
        [ -x "$py" ] || py="$(command -v python3)" || _smpfs_die "python3 is not on PATH"
        _smpfs_say "creating a venv for uid $(id -u) in $SMPFS_VENV with $py"
        mkdir -p "$cache"
        "$py" -m venv "$SMPFS_VENV" || _smpfs_die "cannot create a venv (Debian: apt-get install python3-venv)"
        # the unit tier needs no FUSE, and smpfs is imported from the checkout
        # (PYTHONPATH), which this user may not be able to write to
        "$SMPFS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            cryptography sqlite-utils click trio h11 pytest pytest-trio \
            || _smpfs_die "pip install failed in $SMPFS_VENV"
    fi
    if ! "$SMPFS_VENV/bin/python" -c 'import importlib.metadata as m; m.distribution("smpfs")' 2>/dev/null; then
        # smpfs's metadata (its pytest plugin, `smpfs --version`), installed
        # from a copy this user can build in; the code itself is the checkout's
        local src
        src="$(mktemp -d)"
        cp -r "$SMPFS_ROOT/pyproject.toml" "$SMPFS_ROOT/README.md" "$SMPFS_ROOT/smpfs" "$src/"
        "$SMPFS_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$src" \
            || _smpfs_die "pip install of smpfs failed in $SMPFS_VENV"
        rm -rf "$src"
    fi
    export PYTHONPATH="$SMPFS_ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

smpfs_setup() {
    _smpfs_apt
    _smpfs_fuse
    _smpfs_venv
}

# Unmount FUSE mounts of smpfs left under DIR (a killed test or demo); lazily
# if a normal unmount is refused. Prints what it cleaned.
smpfs_cleanup_mounts() {
    local dir="$1" mnt
    [ -n "$dir" ] || return 0
    while read -r _ mnt fstype _; do
        case "$fstype" in fuse.smpfs|fuse) ;; *) continue ;; esac
        mnt="$(printf '%b' "$mnt")"                   # /proc/mounts escapes spaces as \040
        case "$mnt" in "$dir"/*) ;; *) continue ;; esac
        printf 'smpfs: cleaning up leaked mount %s\n' "$mnt" >&2
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null || true
    done < /proc/mounts
}

# Run directly: install, and nothing else.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    smpfs_setup
    _smpfs_say "smpfs is installed: $SMPFS_VENV/bin/smpfs"
fi
