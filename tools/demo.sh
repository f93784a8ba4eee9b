#!/usr/bin/env bash
# smpfs end to end, on a throw-away SMP: a side-by-side migration of PC-OLD's
# user state to PC-NEW, each computer acting as its own uid.
#
#   ./tools/demo.sh          (as root; installs what is missing first)
#
# Everything lives in a temporary directory that is unmounted and removed on
# exit, whatever happens. SMPFS_DEMO_UIDS="62001 62002" picks the two uids
# (plain numbers: no user accounts are needed).
set -euo pipefail

# shellcheck source=tools/setup.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$SMPFS_ROOT"
[ "$(id -u)" = 0 ] || _smpfs_die "run the demo as root: it mounts a filesystem and acts as other uids"
smpfs_setup

read -r OLD_UID NEW_UID <<<"${SMPFS_DEMO_UIDS:-62001 62002}"
PY="$SMPFS_VENV/bin/python"
SMPFS="$SMPFS_VENV/bin/smpfs"

say()  { printf '\n==> %s\n' "$*"; }
# indent, and write the long store path as $STORE once it is known
show() {
    local l
    for l in "$@"; do
        [ -z "${STORE:-}" ] || l="${l//"$STORE"/\$STORE}"
        if [ -n "$l" ]; then printf '    %s\n' "$l"; else echo; fi
    done
}
indent() { while IFS= read -r l; do show "$l"; done; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }

# Run a command as a uid. The venv's interpreter lives under /root, which other
# uids cannot read, so only /usr/bin tools are exec'd this way.
as() { local uid="$1"; shift; setpriv --reuid "$uid" --regid "$uid" --clear-groups "$@"; }

# Run `smpfs ARGS` as a computer's uid: fork and drop privileges without exec
# (smpfs.testing.as_uid), after importing everything the CLI needs as root.
smpfs_as() {
    "$PY" - "$@" <<'EOF'
import sys
from smpfs import cli
from smpfs.mount import control      # noqa: F401 - imported while still root
from smpfs.testing import as_uid

def run():
    try:
        cli.main(args=sys.argv[2:], prog_name="smpfs")
        code = 0
    except SystemExit as e:
        code = e.code
    sys.stdout.flush()
    sys.stderr.flush()
    return code

sys.exit(as_uid(int(sys.argv[1]), run))
EOF
}

DEMO="$(mktemp -d /tmp/smpfs-demo.XXXXXX)"
chmod 711 "$DEMO"                         # the computers' uids must traverse it
export SMPFS_STATE="$DEMO/state"
MNT="$DEMO/mnt"

cleanup() {
    local rc=$?
    [ "$rc" = 0 ] || cp "$SMPFS_STATE/smpfs.log" "$DEMO.log" 2>/dev/null || true
    if mountpoint -q "$MNT" 2>/dev/null; then
        "$SMPFS" umount "$MNT" >/dev/null 2>&1 || fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -uz "$MNT" || true
    fi
    rm -rf --one-file-system "$DEMO"
    if [ "$rc" = 0 ]; then
        printf '\n==> done: unmounted and removed %s\n' "$DEMO"
    else
        printf '\n==> demo failed (exit %s); unmounted and removed %s\n' "$rc" "$DEMO" >&2
        if [ -f "$DEMO.log" ]; then
            echo "last lines of the daemon log:" >&2
            tail -n 20 "$DEMO.log" >&2
            rm -f "$DEMO.log"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A marker that must never appear on disk in clear: in content, names, xattrs.
MARK="plaintext-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

say "smpfs init + mount (state dir $SMPFS_STATE)"
"$SMPFS" init --server DEMO-SMP --min-free 10MB | indent
mkdir "$MNT"
"$SMPFS" mount "$MNT"
show "mounted at $MNT: $(ls "$MNT")"

say "computers PC-OLD (uid $OLD_UID) and PC-NEW (uid $NEW_UID), side-by-side association"
"$SMPFS" computer add PC-OLD --uid "$OLD_UID" | indent
"$SMPFS" computer add PC-NEW --uid "$NEW_UID" | indent
"$SMPFS" associate PC-OLD PC-NEW | indent

# The user profile PC-OLD's migration tool will capture (world-readable source).
PROFILE="$DEMO/profile"
mkdir -p "$PROFILE/Documents" "$PROFILE/AppData"
printf 'Quarterly report %s\n' "$MARK" >"$PROFILE/Documents/report-$MARK.txt"
head -c 3000000 /dev/urandom >"$PROFILE/AppData/mailbox.pst"
{ yes "$MARK" || true; } | head -c 2000000 >>"$PROFILE/AppData/mailbox.pst"
ln -s "Documents/report-$MARK.txt" "$PROFILE/latest-report"
where="content, file names, a symlink target"
if setfattr -n user.comment -v "$MARK" "$PROFILE/Documents/report-$MARK.txt" 2>/dev/null; then
    where="$where and an xattr"
fi
chmod -R a+rX "$PROFILE"

say "Request State Store (capture) as PC-OLD (uid $OLD_UID)"
store="$(smpfs_as "$OLD_UID" request capture)"
show "OSDStateStorePath=$store"
STORE="$store"
unc="$(smpfs_as "$OLD_UID" request capture --unc)"     # a retried request: the same store
[ "${unc##*\\}" = "$(basename "$store")" ] || fail "a second capture request gave another store: $unc"
show "UNC: $unc (asked twice: the same store)"

say "Capture User State as PC-OLD: cp -a + tar into the store"
as "$OLD_UID" mkdir "$STORE/USMT"
as "$OLD_UID" cp -a "$PROFILE/." "$STORE/USMT/File/"
as "$OLD_UID" tar -C "$PROFILE" -cf "$STORE/USMT/USMT.MIG" .
show "$(as "$OLD_UID" du -sh --apparent-size "$STORE" | cut -f1) written; PC-OLD sees:"
as "$OLD_UID" ls -l "$STORE/USMT" | indent

say "root cannot read PC-OLD's store (the filesystem decides, not file modes)"
if out="$(ls "$STORE" 2>&1)"; then fail "root listed the store: $out"; fi
show "root: $out"
if out="$(as "$NEW_UID" ls "$STORE" 2>&1)"; then fail "PC-NEW listed the store during capture"; fi
show "PC-NEW during capture: $out"

say "Release State Store (capture) as PC-OLD: read-only, for PC-NEW only"
smpfs_as "$OLD_UID" release capture | indent
if out="$(as "$OLD_UID" ls "$STORE" 2>&1)"; then fail "PC-OLD still reads its released store"; fi
show "PC-OLD now: $out"

say "at rest: ciphertext only (grep for the marker under the state dir)"
STORE_ID="$(basename "$STORE")"
blocks="$(find "$SMPFS_STATE/store/$STORE_ID/b" -type f | wc -l)"
bytes="$(du -sb "$SMPFS_STATE/store/$STORE_ID" | cut -f1)"
show "store ${STORE_ID:0:12}… on disk: $blocks block files, $bytes bytes"
if grep -r -a -l -F "$MARK" "$SMPFS_STATE"; then fail "the marker '$MARK' was found in clear on disk (above)"; fi
show "'$MARK' (in $where): found nowhere"

say "Request State Store (restore) as PC-NEW (uid $NEW_UID)"
RSTORE="$(smpfs_as "$NEW_UID" request restore)"
[ "$RSTORE" = "$STORE" ] || fail "restore got $RSTORE, capture wrote $STORE"
show "OSDStateStorePath=$RSTORE (the same store)"

say "Restore User State as PC-NEW: copy back and compare"
RESTORED="$DEMO/restored"
mkdir -p "$RESTORED/tree" "$RESTORED/mig"
chown -R "$NEW_UID:$NEW_UID" "$RESTORED"
as "$NEW_UID" cp -a "$STORE/USMT/File/." "$RESTORED/tree/"
as "$NEW_UID" tar -C "$RESTORED/mig" -xf "$STORE/USMT/USMT.MIG"
diff -r --no-dereference "$PROFILE" "$RESTORED/tree" || fail "the restored tree differs"
diff -r --no-dereference "$PROFILE" "$RESTORED/mig" || fail "the restored USMT.MIG differs"
show "both copies identical to the profile ($(find "$PROFILE" | wc -l) entries)"
if xa="$(as "$NEW_UID" getfattr --only-values -n user.comment "$STORE/USMT/File/Documents/report-$MARK.txt" 2>/dev/null)"; then
    [ "$xa" = "$MARK" ] || fail "xattr read back as '$xa'"
    show "xattr user.comment read back intact"
fi
if out="$(as "$NEW_UID" touch "$STORE/USMT/new-file" 2>&1)"; then fail "PC-NEW could write to the released store"; fi
show "PC-NEW writing: $out"

say "Release State Store (restore) as PC-NEW: the retention timer starts"
smpfs_as "$NEW_UID" release restore | indent

say "smpfs status"
"$SMPFS" status | indent

say "smpfs umount"
"$SMPFS" umount "$MNT"
show "unmounted cleanly"
