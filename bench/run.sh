#!/usr/bin/env bash
# Convenience wrapper: install PgBouncer with apt-get when it is missing (Debian/Ubuntu,
# as root), then run the comparison. Arguments go to pgbench_compare.py, e.g. --quick.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing pgbouncer with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q pgbouncer
        # Debian's package starts a pgbouncer service; the benchmark runs its own.
        if command -v systemctl >/dev/null 2>&1; then systemctl stop pgbouncer 2>/dev/null || true; fi
    else
        echo "pgbouncer is not installed (and cannot apt-get it here): comparing with direct only" >&2
    fi
fi

exec python3 bench/pgbench_compare.py "$@"
