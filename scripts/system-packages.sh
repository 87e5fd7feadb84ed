#!/usr/bin/env bash
# Installs the Debian packages the test suite needs besides the Python environment:
# Chromium (the dashboard's end-to-end test drives it headless) and a font for it to
# render text with; iproute2, whose `ip netns` makes the multi-host test's hosts. A no-op
# when they are installed; apt-get otherwise, non-interactive,
# as root or through passwordless sudo. Called by .ci/run before the tests.
set -euo pipefail

packages=(chromium fonts-dejavu-core iproute2)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "system-packages: ${missing[*]} missing and no root (run this script as root)" >&2
    exit 1
fi

echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
install=("${as_root[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}")
# Package lists may be missing or stale on a fresh machine: refresh them once and retry.
if ! "${install[@]}" >/dev/null; then
    "${as_root[@]}" apt-get update -q >/dev/null
    "${install[@]}" >/dev/null
fi
command -v chromium >/dev/null
