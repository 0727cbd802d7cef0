# shellcheck shell=sh
# The host's kiln lock, shared by the apply script and the Galera executor (loaded with
# include_str! by src/shell/mod.rs, placed before either). flock on /var/lib/kiln/lock,
# fd 9, held until the shell exits: a lock held by a dead run is released by the kernel.
# Another run holds it (or the orphan of a lost connection, which stops at its next step
# boundary): say who, wait up to $1 seconds, then give up naming the holder (exit 75).
# Once held, $2 names this run in lock.holder.
kiln_lock() {
  mkdir -p /var/lib/kiln || exit 70
  exec 9>>/var/lib/kiln/lock
  if ! flock -n 9; then
    printf '@@kiln:waiting %s\n' "$(cat /var/lib/kiln/lock.holder 2>/dev/null || echo unknown)"
    if ! flock -w "$1" 9; then
      printf '@@kiln:locked %s\n' "$(cat /var/lib/kiln/lock.holder 2>/dev/null || echo unknown)"
      exit 75
    fi
  fi
  printf '%s\n' "$2" > /var/lib/kiln/lock.holder
}
