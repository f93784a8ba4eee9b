#!/bin/bash
# Install smpfs's mount(8) helper and systemd unit for the smpfs in this checkout.
#   ./tools/install-system.sh          (as root, after ./tools/setup.sh or ./tools/demo.sh)
# Afterwards:
#   mount -t fuse.smpfs /var/lib/smpfs /srv/smp
#   echo '/var/lib/smpfs /srv/smp fuse.smpfs defaults,_netdev 0 0' >> /etc/fstab
#   systemctl enable --now smpfs@$(systemd-escape --path /srv/smp).service
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
helper="$here/.venv/bin/mount.fuse.smpfs"
[ -x "$helper" ] || { echo "install smpfs first: ./tools/setup.sh" >&2; exit 1; }
ln -sf "$helper" /sbin/mount.fuse.smpfs
echo "installed /sbin/mount.fuse.smpfs -> $helper"
if [ -d /etc/systemd/system ]; then
    sed "s#/opt/smpfs#$here#g" "$here/tools/systemd/smpfs@.service" > /etc/systemd/system/smpfs@.service
    command -v systemctl >/dev/null && systemctl daemon-reload 2>/dev/null || true
    echo "installed /etc/systemd/system/smpfs@.service"
fi
