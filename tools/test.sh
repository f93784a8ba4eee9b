#!/usr/bin/env bash
# Install what smpfs needs (if missing) and run its test suite.
#
#   ./tools/test.sh                      # lint, then the default suite (unit + mount tiers)
#   ./tools/test.sh unit                 # the unit tier only: any user, no FUSE, seconds
#   ./tools/test.sh lint                 # ruff, the layering contract, the type checker
#   ./tools/test.sh -x tests/mount/test_smoke.py -k roundtrip    # any pytest arguments
#
# The default run needs root and /dev/fuse: the mount tests mount real
# filesystems and act as other uids. The exit code is pytest's; in addition a
# run that executed no test (nothing collected, or everything skipped) fails,
# so it cannot pass for green. SMPFS_TEST_TIMEOUT (e.g. 30m) bounds the run:
# default none, 80m when CI=true. SMPFS_LONG=1 adds the long tier (tests/long).
set -euo pipefail

# shellcheck source=tools/setup.sh
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$SMPFS_ROOT"

smpfs_lint() {
    "$SMPFS_VENV/bin/ruff" check -q smpfs tests tools
    "$SMPFS_VENV/bin/lint-imports" --no-cache >/dev/null || "$SMPFS_VENV/bin/lint-imports" --no-cache
    "$SMPFS_VENV/bin/mypy" --no-error-summary
}

if [ "${1:-}" = unit ]; then
    # The unit tier: no root, no FUSE. Uses .venv when this user can run it,
    # else a user-owned venv (see smpfs_user_venv in tools/setup.sh).
    shift
    [ "$(id -u)" = 0 ] && smpfs_setup || smpfs_user_venv
    exec "$SMPFS_VENV/bin/pytest" -q -p no:cacheprovider tests/unit "$@" </dev/null
fi

[ "$(id -u)" = 0 ] || _smpfs_die "run the tests as root: they mount FUSE filesystems and switch uids (any user: ./tools/test.sh unit)"
smpfs_setup

if [ "${1:-}" = lint ]; then
    smpfs_lint
    echo "lint: ruff, import-linter and mypy found nothing"
    exit 0
fi
if [ $# = 0 ]; then
    smpfs_lint || _smpfs_die "lint failed (./tools/test.sh lint shows it)"
fi

# The fixture skips mount tests where FUSE cannot work; here that is an error.
why="$("$SMPFS_VENV/bin/python" -c 'from smpfs.testing import fuse_available; print(fuse_available() or "")')"
[ -z "$why" ] || _smpfs_die "mount tests cannot run here: $why"

# Each run mounts under a private directory, so that a mount a killed test
# leaked is cleaned up here without touching anyone else's.
run_dir="$(mktemp -d "${TMPDIR:-/tmp}/smpfs-run.XXXXXX")"
chmod 711 "$run_dir"                       # the tests' uids must traverse it
export SMPFS_TEST_TMP="$run_dir"
report="$run_dir/pytest.xml"
trap 'smpfs_cleanup_mounts "$run_dir"; rm -rf --one-file-system "$run_dir"' EXIT

timeout_spec="${SMPFS_TEST_TIMEOUT:-}"
[ -n "$timeout_spec" ] || { [ "${CI:-}" = true ] && timeout_spec=80m; } || true
runner=()
[ -z "$timeout_spec" ] || runner=(timeout --kill-after=60 "$timeout_spec")

set +e
"${runner[@]}" "$SMPFS_VENV/bin/pytest" -q --junitxml="$report" -o junit_family=xunit2 "$@" </dev/null
rc=$?
set -e

if [ "$rc" = 124 ] && [ -n "$timeout_spec" ]; then
    echo "tools/test.sh: the test run hit its time limit ($timeout_spec)" >&2
fi

# Exit 0 with no test executed is not success. Skip the check for runs that
# are not meant to execute tests, or whose report the caller redirected.
if [ "$rc" = 0 ]; then
    case " $* " in
        *" --co "*|*" --collect-only "*|*" -h "*|*" --help "*|*" --version "*|*" --fixtures "*|*" --markers "*|*--junitxml*|*--junit-xml*) ;;
        *)
            executed="$("$SMPFS_VENV/bin/python" - "$report" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print(0); raise SystemExit
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
print(sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites))
EOF
)"
            if [ "${executed:-0}" -le 0 ]; then
                echo "tools/test.sh: pytest exited 0 but executed no test (all skipped or none selected): failing" >&2
                rc=5
            fi
            ;;
    esac
fi
exit "$rc"
