#!/usr/bin/env bash
# Installs what VastSky-TS needs on a fresh Debian 12 machine (run as root, or
# with sudo available): the Debian tools the tests and the demo use, and the
# npm packages; then builds. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

DEBS=(
  qemu-utils qemu-block-extra   # qemu-img, qemu-io (nbd:// and iscsi://)
  qemu-system-x86               # qemu-system-x86_64 (TCG, no KVM needed): live-migration tests, guest disk on NBD
  libnbd-bin                    # nbdinfo, nbdcopy, nbdfuse
  nbdkit                        # C NBD server: the benchmark peer
  fio                           # fio's nbd engine
  libiscsi-bin                  # iscsi-inq, iscsi-ls, iscsi-test-cu
  tgt                           # C iSCSI target: the benchmark/conformance peer
  python3                       # xmlrpc.client: the VastSky XML-RPC tests
  openssl                       # vsky ca (the cluster CA), test certificates, the data key in docs/install.md
  fuse3 e2fsprogs               # nbdfuse + mkfs.ext4: a kernel filesystem on a volume
  procps util-linux mount       # ps, losetup, mount
  prometheus                    # prometheus + promtool: the metrics test and deploy/prometheus checks
  systemd                       # systemd-analyze verify: the deploy/systemd units test
)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run build
