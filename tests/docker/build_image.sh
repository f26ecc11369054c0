#!/usr/bin/env bash
# Build the docker driver tests' image without a registry: a rootfs holding only Debian's
# busybox-static (one static binary, so no libc to copy) and its applet symlinks, imported
# as a single-layer image. CI has no registry access, so `docker pull busybox` is no option.
#
# Usage: tests/docker/build_image.sh [IMAGE]   (default guard-test-busybox:latest)
# Needs: a running dockerd, the docker CLI, /bin/busybox from busybox-static.
set -euo pipefail

image="${1:-guard-test-busybox:latest}"
busybox="${BUSYBOX:-/bin/busybox}"

# A dynamically linked busybox would fail inside the image with a bare "no such file or
# directory" (the missing loader); say what is wrong instead.
if ! "$busybox" true 2>/dev/null; then
  echo "build_image.sh: $busybox does not run; install busybox-static" >&2
  exit 1
fi
if command -v ldd >/dev/null 2>&1 && ldd "$busybox" >/dev/null 2>&1; then
  echo "build_image.sh: $busybox is dynamically linked; install busybox-static" >&2
  exit 1
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,tmp,etc,proc,sys,dev,www}
cp "$busybox" "$rootfs/bin/busybox"
chmod 0755 "$rootfs/bin/busybox"
for applet in sh httpd env cat echo sleep true false kill ls printenv; do
  ln -s busybox "$rootfs/bin/$applet"
done
chmod 1777 "$rootfs/tmp"
echo "ok" >"$rootfs/www/index.html"
echo "root:x:0:0:root:/:/bin/sh" >"$rootfs/etc/passwd"

tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/bin' \
  --change 'CMD ["/bin/sh"]' \
  - "$image" >/dev/null
echo "built $image"
