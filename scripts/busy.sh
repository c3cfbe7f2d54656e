#!/bin/sh
# Run a command on a busy machine: BUSY_CPUS (default 2) CPU hogs run beside it, stress-ng's
# when it is installed, else plain Python loops. The hogs are stopped when the command ends,
# whether it passed, failed or was interrupted; the command's exit status is kept.
#
#   scripts/busy.sh make test
set -u

cpus=${BUSY_CPUS:-2}
hogs=""

stop_hogs() {
    for pid in $hogs; do
        kill "$pid" 2>/dev/null
    done
    for pid in $hogs; do
        wait "$pid" 2>/dev/null
    done
    hogs=""
}
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if command -v stress-ng >/dev/null 2>&1; then
    # The parent stops its workers when it gets SIGTERM.
    stress-ng --cpu "$cpus" --quiet &
    hogs=$!
    echo "busy.sh: stress-ng --cpu $cpus beside: $*" >&2
else
    python=${PYTHON:-python3}
    i=0
    while [ "$i" -lt "$cpus" ]; do
        "$python" -c 'while True: pass' &
        hogs="$hogs $!"
        i=$((i + 1))
    done
    echo "busy.sh: $cpus '$python -c while True: pass' beside: $*" >&2
fi

"$@"
status=$?
stop_hogs
exit "$status"
