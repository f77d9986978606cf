#!/bin/sh
# SyftBox app entry point. The Go client (SyftBox 0.5+) clones this repository into
# apps/<id>/, runs this script once from there with SYFTBOX_APP_DIR and
# SYFTBOX_CLIENT_CONFIG_PATH set, and stops it with SIGTERM (SIGKILL 3 s later); the daemon
# then runs for as long as the client does. The 0.4 Python client runs the script again every
# few seconds and waits for it, so there (no SYFTBOX_APP_DIR) each run is one release cycle
# that returns at once when the cooldown has not elapsed.
#
# The datasite and email come from the client's config unless a config file sets [syftbox]
# ($CPU_TRACKER_CONFIG, else ~/.config/cpu-tracker/config.toml).
set -eu
cd "$(dirname "$0")"
venv="${CPU_TRACKER_APP_VENV:-.venv}"
stamp="$venv/.installed-from"
want="$(cat pyproject.toml cpu_tracker_daemon/__init__.py | cksum)"
if [ ! -x "$venv/bin/cpu-tracker" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "cpu-tracker: setting up $venv (first run, or an update)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check .
    printf '%s\n' "$want" > "$stamp"
fi
if [ -n "${SYFTBOX_APP_DIR:-}" ]; then
    exec "$venv/bin/cpu-tracker" run
fi
status=0
"$venv/bin/cpu-tracker" once || status=$?
case "$status" in
    5 | 6) exit 0 ;;  # the daemon already runs, or the cooldown has not elapsed: nothing to do
    *) exit "$status" ;;
esac
