#!/bin/sh
# SyftBox app entry point. The Go client (SyftBox 0.5+) clones this repository into
# apps/<id>/, runs this script once from there with SYFTBOX_APP_DIR and
# SYFTBOX_CLIENT_CONFIG_PATH set and a PATH without virtualenvs, sends its output to
# apps/<id>/logs/app.log, stops it with SIGTERM (SIGKILL 3 s later), and never starts it again
# if it exits. So under that client this script does not exit until it is stopped: when the
# setup fails (no Python 3.11+, pip cannot install) or the daemon refuses to run (a bad config,
# a ledger problem, another instance), it writes one line saying why and when it tries again,
# and tries again 30 s later, then 1 min, 2 min, ... at most hourly: fixing the cause is enough.
#
# The 0.4 Python client runs the script again every few seconds and waits for it, so there (no
# SYFTBOX_APP_DIR) each run is one release cycle that returns at once when the cooldown has not
# elapsed.
#
# The datasite and email come from the client's config unless a config file sets [syftbox]
# ($CPU_TRACKER_CONFIG, else ~/.config/cpu-tracker/config.toml). The venv is .venv here
# (git-ignored, as are the client's logs/ and .syftboxapp.json), or $CPU_TRACKER_APP_VENV.
set -u
cd "$(dirname "$0")" || exit 1
venv="${CPU_TRACKER_APP_VENV:-.venv}"
stamp="$venv/.installed-from"
want="$(cat pyproject.toml cpu_tracker_daemon/__init__.py | cksum)"
case "${CPU_TRACKER_APP_RETRY_SECONDS:-}" in
    "" | *[!0-9]* | 0*) delay=30 ;;
    *) delay=$CPU_TRACKER_APP_RETRY_SECONDS ;;
esac
first_delay=$delay
max_delay=3600

say() { printf 'cpu-tracker app: %s\n' "$*" >&2; }

# Every child runs in the background and is waited for, so a SIGTERM to this script (the client
# stopping the app) reaches it at once, in the middle of a pip install or a back-off sleep too.
child=""
stopping=0
on_stop() {
    stopping=1
    if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null; fi
}
trap on_stop TERM INT
# run_child COMMAND...: sets $status to its exit status.
run_child() {
    "$@" &
    child=$!
    status=0
    wait "$child" || status=$?
    while [ "$status" -gt 128 ] && kill -0 "$child" 2>/dev/null; do
        status=0  # wait was cut short by the trap: the child is still stopping
        wait "$child" || status=$?
    done
    child=""
}

# A Python 3.11 or newer on PATH, newest name first; $found lists the ones too old.
found=""
find_python() {
    for name in python3.14 python3.13 python3.12 python3.11 python3; do
        path="$(command -v "$name" 2>/dev/null)" || continue
        if "$path" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            python="$path"
            return 0
        fi
        version="$("$path" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)"
        found="$found${found:+, }$name is ${version:-unusable}"
    done
    return 1
}

# setup: makes the venv and installs this checkout into it; on failure says why, returns 1.
setup() {
    found=""
    uv=""
    # uv's installer puts it in ~/.local/bin (~/.cargo/bin before 0.5), Homebrew in its own bin;
    # a login shell's PATH may lack them (Debian's /etc/profile sets its own).
    for candidate in "$(command -v uv 2>/dev/null)" "${HOME:-/nonexistent}/.local/bin/uv" "${HOME:-/nonexistent}/.cargo/bin/uv" \
        /opt/homebrew/bin/uv /usr/local/bin/uv; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then uv="$candidate" && break; fi
    done
    if [ -n "$uv" ]; then
        how="uv ($uv)"
    elif find_python; then
        how="$python"
    else
        problem="needs Python 3.11 or newer and found ${found:-no python3} on PATH ($PATH); install uv (https://docs.astral.sh/uv/: it fetches a Python itself) or Python 3.11+ (macOS: brew install python@3.13; Debian, Ubuntu: apt install python3 python3-venv)"
        return 1
    fi
    say "setting up $venv with $how (first run, or an update)"
    if [ -f "$venv/pyvenv.cfg" ]; then rm -rf "$venv"; fi
    if [ -n "$uv" ]; then
        run_child "$uv" venv --quiet --python ">=3.11" "$venv"
    else
        run_child "$python" -m venv "$venv"
    fi
    if [ "$status" != 0 ]; then
        problem="could not make the venv $venv with $how (exit $status; the lines above say why; on Debian and Ubuntu: apt install python3-venv)"
        return 1
    fi
    if [ -n "$uv" ]; then
        run_child "$uv" pip install --quiet --python "$venv/bin/python" .
    else
        run_child "$venv/bin/pip" install --quiet --disable-pip-version-check .
    fi
    if [ "$status" != 0 ]; then
        problem="could not install cpu-tracker and its packages into $venv (exit $status; the lines above say why: often no network)"
        return 1
    fi
    printf '%s\n' "$want" > "$stamp"
}

ready() { [ -x "$venv/bin/cpu-tracker" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; }

if [ -z "${SYFTBOX_APP_DIR:-}" ]; then  # the 0.4 client: one cycle; it runs this again soon
    if ! ready && ! setup; then
        say "$problem"
        exit 1
    fi
    status=0
    "$venv/bin/cpu-tracker" once || status=$?
    case "$status" in
        5 | 6) exit 0 ;;  # the daemon already runs, or the cooldown has not elapsed: nothing to do
        *) exit "$status" ;;
    esac
fi

while :; do
    problem=""
    if ready || setup; then
        started="$(date +%s)"
        run_child "$venv/bin/cpu-tracker" run
        if [ "$stopping" = 1 ] || [ "$status" = 0 ]; then
            exit 0  # stopped by the client: the daemon exits 0 on SIGTERM
        fi
        case "$status" in  # the meanings are exit_codes.EXIT_CODES' (a test keeps them equal)
            3) what="bad configuration, or a directory that cannot be written" ;;
            4) what="privacy ledger corrupt or unreadable (releases stop; it is never reset)" ;;
            5) what="another cpu-tracker already runs on this state directory" ;;
            *) what="see 'cpu-tracker --help' for its exit codes" ;;
        esac
        problem="the daemon stopped with exit $status: $what; the line above says what to fix"
        # A daemon that ran for an hour or more before it stopped starts the back-off afresh.
        if [ $(($(date +%s) - started)) -ge "$max_delay" ]; then delay=$first_delay; fi
    fi
    [ "$stopping" = 1 ] && exit 0
    if [ "$delay" -lt 120 ]; then when="$delay s"; else when="$((delay / 60)) min"; fi
    say "$problem; trying again in $when (then at most hourly): fixing the cause is enough"
    run_child sleep "$delay"
    [ "$stopping" = 1 ] && exit 0
    delay=$((delay * 2))
    if [ "$delay" -gt "$max_delay" ]; then delay=$max_delay; fi
done
