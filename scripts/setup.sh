#!/usr/bin/env bash
# Installs the Debian packages moonring needs to build and test, only when one
# is missing, and the npm browser driver of the browser specs when it is not
# in spec/browser/node_modules. Safe to run again; `make run` and `make test`
# call it first.
# Usage: scripts/setup.sh [extra-package ...]   (bench passes its own extras)
set -euo pipefail

# chromium: the browser specs (spec/browser/) drive it headless.
# redis-server + lua-nginx-redis: the outbound I/O specs run OpenResty's
# lua-resty-redis (Debian's copy, unchanged) and moonring.redis against a real
# Redis; lua-sql-sqlite3: a blocking library the thread-pool specs call.
# clang + libclang-rt-14-dev: the fuzzer (spec/fuzz/); libFuzzer's and the
# sanitizers' runtimes are in libclang-rt-14-dev, only recommended by clang.
pkgs=(build-essential cmake pkg-config liblua5.4-dev libuv1-dev node-llhttp
      libssl-dev lua5.4 lua-busted lua-socket lua-cjson chromium clang libclang-rt-14-dev
      redis-server lua-nginx-redis lua-sql-sqlite3 "$@")
# node and npm for the browser driver, unless a Node.js is already there
# (NodeSource's nodejs ships its own npm and conflicts with Debian's).
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# The browser driver for the specs (playwright-core, no browser download: it
# runs Debian's chromium), into spec/browser/node_modules from the committed
# package-lock.json, when it is not there yet.
browser_dir="$(cd "$(dirname "$0")/.." && pwd)/spec/browser"
if [ ! -f "$browser_dir/node_modules/playwright-core/package.json" ]; then
  echo "setup: npm ci in spec/browser (playwright-core)" >&2
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
