#!/usr/bin/env bash
# Install smpfs for real, from this checkout: the one documented way.
#
#   ./tools/install-system.sh               # as root
#   ./tools/install-system.sh --uninstall
#
# 0. installs the Debian packages it needs if missing (fuse3, libfuse3-dev,
#    pkg-config, gcc, python3-venv, python3-dev; as tools/setup.sh does);
# 1. builds a wheel of this checkout (pip wheel);
# 2. installs it, with its dependencies, into a virtualenv at PREFIX
#    (default /opt/smpfs) made with /usr/bin/python3, so every uid can run it
#    (a pyenv or a .venv under /root cannot be executed by the computers' uids);
# 3. links PREFIX/bin/smpfs into /usr/local/bin (every uid calls it: the
#    computers run `smpfs request ...` themselves) and PREFIX/bin/mount.fuse.smpfs
#    into /usr/local/sbin and /sbin (where mount(8) looks for it);
# 4. writes the systemd unit smpfs@.service into /etc/systemd/system with the
#    path of the smpfs it installed, and the docs into PREFIX/share/doc/smpfs.
#
# Running it again upgrades smpfs in place (the same venv, the same links);
# the state dir (/var/lib/smpfs) and /etc/default/smpfs are never touched.
# --uninstall removes exactly what it installed (links only if they point into
# PREFIX), never an SMP's state dir or storage folders (see `smpfs role remove`).
#
# Options:
#   --prefix DIR      the virtualenv (default /opt/smpfs)
#   --root DIR        install into DIR as if it were / (a staging tree or an
#                     image; the installed files name the final paths)
#   --python PATH     the interpreter for the venv (default /usr/bin/python3)
#   --uninstall       remove what a previous run installed
#
# Afterwards:
#   smpfs init && mkdir -p /srv/smp && smpfs mount /srv/smp
#   mount -t fuse.smpfs /var/lib/smpfs /srv/smp
#   systemctl enable --now smpfs@$(systemd-escape --path /srv/smp).service
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/opt/smpfs
root=
python=/usr/bin/python3
action=install
bindir=/usr/local/bin
sbindir=/usr/local/sbin
helperdir=/sbin
unitdir=/etc/systemd/system

die() { printf 'install-system.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) prefix="${1#*=}"; shift ;;
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) root="${1#*=}"; shift ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) python="${1#*=}"; shift ;;
        --uninstall) action=uninstall; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
prefix="${prefix%/}"
if [ -n "$root" ]; then
    root="$(cd "$root" 2>/dev/null && pwd)" || die "--root $root does not exist"
    [ "$root" != / ] || root=
fi
[ -n "$root" ] || [ "$(id -u)" = 0 ] || die "run it as root (or give --root DIR to stage an install)"

venv="$root$prefix"

uninstall() {
    local link
    for link in "$bindir/smpfs" "$sbindir/mount.fuse.smpfs" "$helperdir/mount.fuse.smpfs"; do
        if [ -L "$root$link" ] && [[ "$(readlink "$root$link")" == "$prefix"/* ]]; then
            rm -f "$root$link"
            say "removed $root$link"
        fi
    done
    if [ -f "$root$unitdir/smpfs@.service" ] && grep -q "^ExecStart=$prefix/bin/smpfs " "$root$unitdir/smpfs@.service"; then
        rm -f "$root$unitdir/smpfs@.service"
        say "removed $root$unitdir/smpfs@.service"
        [ -n "$root" ] || { command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true; }
    fi
    if [ -f "$venv/pyvenv.cfg" ] && [ -f "$venv/.smpfs-install" ]; then
        rm -rf --one-file-system "$venv"
        say "removed $venv"
    elif [ -e "$venv" ]; then
        say "left $venv: not a virtualenv this script made"
    fi
}

if [ "$action" = uninstall ]; then
    uninstall
    exit 0
fi

if [ -z "$root" ]; then
    # the Debian packages smpfs needs to build and run (only what is missing; tools/setup.sh)
    # shellcheck source=tools/setup.sh
    . "$here/tools/setup.sh"
    SMPFS_APT_PACKAGES+=(python3 python3-venv python3-dev)
    _smpfs_apt
fi
[ -x "$python" ] || die "$python is missing (Debian: apt-get install python3 python3-venv)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$python is older than 3.11"
"$python" -c 'import ensurepip, venv' 2>/dev/null || die "$python cannot make a venv (apt-get install python3-venv)"
if [ -e "$venv" ] && [ ! -f "$venv/.smpfs-install" ]; then
    die "$prefix exists and was not made by this script: move it away or give another --prefix"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/smpfs-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. the wheel (built from a copy, so the checkout is left as it is)
git -C "$here" ls-files -z 2>/dev/null | tar -C "$here" --null -T - -cf - | tar -C "$work" -xf - \
    || { rm -rf "$work"; mkdir -p "$work"; cp -a "$here/." "$work/"; rm -rf "$work/.venv"; }
mkdir -p "$work/dist"
say "building the smpfs wheel"
"$python" -m venv "$work/build-env"
"$work/build-env/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/dist" "$work" >/dev/null
wheel="$(ls "$work"/dist/smpfs-*.whl)"

# 2. the venv at PREFIX (kept across runs: an upgrade replaces smpfs in it)
if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtualenv $venv with $python ($("$python" --version 2>&1))"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    touch "$venv/.smpfs-install"
fi
say "installing $(basename "$wheel") into $venv"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade --force-reinstall --no-deps "$wheel"
"$venv/bin/pip" install -q --disable-pip-version-check "$wheel"          # its dependencies
if [ -n "$root" ]; then
    # the venv was made at ROOT/PREFIX: make its scripts and config name PREFIX
    grep -rlI --null -- "$root$prefix" "$venv/bin" "$venv/pyvenv.cfg" 2>/dev/null \
        | xargs -0 -r sed -i "s#$root$prefix#$prefix#g"
fi
chmod -R a+rX "$venv"
mkdir -p "$venv/share/doc/smpfs"
cp "$here/README.md" "$here"/docs/*.md "$venv/share/doc/smpfs/"

# 3. the commands
mkdir -p "$root$bindir" "$root$sbindir" "$root$helperdir"
ln -sfn "$prefix/bin/smpfs" "$root$bindir/smpfs"
ln -sfn "$prefix/bin/mount.fuse.smpfs" "$root$sbindir/mount.fuse.smpfs"
[ "$(readlink -f "$root$helperdir")" = "$(readlink -f "$root$sbindir")" ] \
    || ln -sfn "$prefix/bin/mount.fuse.smpfs" "$root$helperdir/mount.fuse.smpfs"
say "linked $root$bindir/smpfs, $root$sbindir/mount.fuse.smpfs and $root$helperdir/mount.fuse.smpfs -> $prefix/bin"

# 4. the systemd unit, naming what was installed
mkdir -p "$root$unitdir"
# (the placeholders are replaced in the unit's settings only; its comment keeps explaining them)
sed -e "/^[[:space:]]*[#;]/!{s#@SMPFS@#$prefix/bin/smpfs#g; s#@DOC@#$prefix/share/doc/smpfs#g}" \
    "$here/tools/systemd/smpfs@.service" > "$root$unitdir/smpfs@.service.tmp"
mv "$root$unitdir/smpfs@.service.tmp" "$root$unitdir/smpfs@.service"
chmod 644 "$root$unitdir/smpfs@.service"
say "wrote $root$unitdir/smpfs@.service (ExecStart=$prefix/bin/smpfs)"
if [ -z "$root" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
say "installed: $("$venv/bin/python" -c 'import importlib.metadata as m; print("smpfs", m.version("smpfs"))') in $venv${root:+ (for $prefix once $root is /)}"
