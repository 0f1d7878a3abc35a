#!/usr/bin/env sh
# Installs the Debian packages the local stack and the tests need, when they
# are missing: PostgreSQL 15 with pgTAP and pg_cron, Redis, and on request
# Chromium (--with-browser, for the HTML report test) and wrk (--with-bench,
# the benchmark's HTTP load generator). As root it installs them with
# apt-get; otherwise it names what is missing and how to install it.
set -eu
packages="postgresql-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl postgresql-15-cron redis-server"
for flag in "$@"; do
  case "$flag" in
    --with-browser) packages="$packages chromium" ;;
    --with-bench) packages="$packages wrk" ;;
    *) echo "setup: unknown option $flag" >&2; exit 2 ;;
  esac
done
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing packages:$missing (install PostgreSQL 15 with pgTAP and pg_cron, and Redis, with your package manager)" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing Debian packages:$missing" >&2
  echo "setup: install them with: sudo apt-get install -y$missing" >&2
  exit 1
fi
echo "setup: installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
