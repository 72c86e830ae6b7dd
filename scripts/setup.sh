#!/usr/bin/env bash
# Installs the Debian packages moonring needs to build and test, only when one
# is missing. Safe to run again; `make run` and `make test` call it first.
# Usage: scripts/setup.sh [extra-package ...]   (bench passes its own extras)
set -euo pipefail

pkgs=(build-essential cmake pkg-config liblua5.4-dev libuv1-dev node-llhttp
      lua5.4 lua-busted lua-socket lua-cjson "$@")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
