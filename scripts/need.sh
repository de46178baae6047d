#!/usr/bin/env bash
# need.sh WHAT...: makes sure the programs that `make test`, `make demo`
# and `make bench` need are on this machine. Missing ones are installed with
# apt-get when this runs as root on a machine that has it; otherwise it
# stops at once and names the one command to run.
#   mariadb   the server binaries tests start (mariadbd, mariadb-install-db)
#             and the mariadb client
#   sysbench  the proxy's sysbench tests and the bench
#   haproxy   the bench's TCP relay floor
#   promtool  checks and unit-tests the alert rules (Debian's prometheus package)
#   chromium  the headless browser the status page's itest loads it in
set -euo pipefail
export PATH="$PATH:/usr/sbin"

pkgs=()
for what in "$@"; do
  case "$what" in
    mariadb)
      command -v mariadbd >/dev/null 2>&1 && command -v mariadb-install-db >/dev/null 2>&1 || pkgs+=(mariadb-server)
      command -v mariadb >/dev/null 2>&1 || pkgs+=(mariadb-client) ;;
    sysbench) command -v sysbench >/dev/null 2>&1 || pkgs+=(sysbench) ;;
    haproxy) command -v haproxy >/dev/null 2>&1 || pkgs+=(haproxy) ;;
    promtool) command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus) ;;
    chromium) command -v chromium >/dev/null 2>&1 || pkgs+=(chromium) ;;
    *) echo "need.sh: unknown requirement $what" >&2; exit 2 ;;
  esac
done
[ ${#pkgs[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${pkgs[*]}. Run:  sudo apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi
echo "installing what is missing: ${pkgs[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${pkgs[@]}" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "${pkgs[@]}"; }
