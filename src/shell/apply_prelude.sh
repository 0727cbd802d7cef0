# shellcheck shell=sh
# The prelude of every apply script (src/apply/script.rs wraps it and the steps in one
# function). Loaded with include_str! by src/shell/mod.rs.
set -u
export DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
K=/var/lib/kiln
mkdir -p "$K/pending" "$K/backup" || exit 70
kiln_lock "$kiln_lock_wait" "$kiln_holder"
L=$(mktemp "$K/log.XXXXXX") || exit 70
trap 'rm -f "$L"' EXIT
# Atomic write: temp file in the target's directory, owner/mode set before it becomes
# visible, fsync, previous version kept under $K/backup, then rename.
kiln_write() {
  d=$(dirname "$1")
  mkdir -p "$d" || return 1
  t=$(mktemp "$d/.kiln.XXXXXX") || return 1
  if ! base64 -d > "$t"; then rm -f "$t"; return 1; fi
  if ! { chown "$2:$3" "$t" && chmod "$4" "$t"; }; then rm -f "$t"; return 1; fi
  sync "$t" 2>/dev/null || true
  if [ -e "$1" ] || [ -L "$1" ]; then
    if ! { mkdir -p "$K/backup$d" && cp -a "$1" "$K/backup$1"; }; then rm -f "$t"; return 1; fi
  fi
  mv -f "$t" "$1"
}
# Owner and mode go on the path itself, never through a symlink: whoever can replace the
# path with a link could otherwise point a root chown/chmod at /etc/shadow. $1 path,
# $2 owner, $3 group (both empty: unchanged), $4 mode (empty: unchanged).
kiln_attrs() {
  if [ -L "$1" ]; then
    printf 'kiln: %s is a symlink; its owner and mode are not changed through it\n' "$1" >&2
    return 1
  fi
  if [ -n "$2" ]; then chown -- "$2:$3" "$1" || return 1; fi
  if [ -n "$4" ]; then chmod -- "$4" "$1" || return 1; fi
}
kiln_remove() {
  if [ -e "$1" ] || [ -L "$1" ]; then
    mkdir -p "$K/backup$(dirname "$1")" && rm -rf "$K/backup$1" && cp -a "$1" "$K/backup$1" && rm -rf "$1"
  fi
}
# dpkg's lock held by another process (unattended-upgrades, an admin's apt) is waited for,
# up to 5 minutes, instead of failing the run at once.
kiln_apt() {
  apt-get -q -y -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
# apt-get update can hang for good on a connection its proxy closed (seen through
# apt-cacher-ng: the http method waits on apt-get with its socket in CLOSE-WAIT, and no
# Acquire::http::Timeout applies): bounded, and retried. The first try gets 120 s, which a
# healthy update needs a fraction of; a slow mirror gets 300 s on the next tries.
kiln_apt_update() {
  kiln_try=0
  for kiln_limit in 120 300 300; do
    kiln_try=$((kiln_try + 1))
    if timeout -k 5 "$kiln_limit" apt-get -q -o Acquire::http::Timeout=60 -o DPkg::Lock::Timeout=100 update; then
      # The time of the last good update, where Ansible and pyinfra look for it too.
      mkdir -p /var/lib/apt/periodic && touch /var/lib/apt/periodic/update-success-stamp
      return 0
    fi
    echo "apt-get update failed or timed out after ${kiln_limit}s at most (try $kiln_try of 3)" >&2
    sleep 2
  done
  return 1
}
kiln_step_end() {
  rc=$1; shift
  if [ "$rc" -eq 0 ]; then
    for i in "$@"; do printf '@@kiln:ok %s\n' "$i"; done
  else
    printf '@@kiln:fail %s %s\n' "$1" "$rc"
    tail -n 30 "$L" | sed "s/^/@@kiln:log $1 /"
    exit 1
  fi
}
