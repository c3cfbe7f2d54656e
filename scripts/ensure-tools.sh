#!/usr/bin/env bash
# The command-line tools the test suite runs for real (archives made by the real zstd, gzip,
# pigz, xz, bzip2, lz4, tar, zip and 7z; containers simulated with unshare). Installs what is
# missing from Debian when run as root; otherwise says what to install.
set -euo pipefail
declare -A package=(
    [zstd]=zstd [pzstd]=zstd [gzip]=gzip [pigz]=pigz [xz]=xz-utils [bzip2]=bzip2 [tar]=tar
    [unshare]=util-linux [lz4]=lz4 [zip]=zip [unzip]=unzip [7z]=p7zip-full
)
missing=()
for command in "${!package[@]}"; do
    command -v "$command" >/dev/null 2>&1 || missing+=("${package[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
wanted=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "the tests need these packages: $wanted(install them, then run make test again)" >&2
    exit 1
fi
echo "installing $wanted" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $wanted >/dev/null
