"""The exit codes, in one place: each error type's code, looked up along its MRO (a subclass
keeps its parent's), and the codes a service restart cannot fix. ``--help``, the README and
the systemd unit all read them from here."""

from __future__ import annotations

from cpu_tracker_daemon.errors import (
    AnotherInstanceError,
    BudgetExhaustedError,
    ConfigError,
    CooldownError,
    CpuTrackerError,
    Interrupted,
    LedgerCorruptError,
    LedgerUnavailableError,
    NoiseUnavailableError,
    OutputError,
    RoundEndedError,
    ServiceError,
    UsageError,
)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_LEDGER = 4
EXIT_INSTANCE = 5
EXIT_COOLDOWN = 6
EXIT_BUDGET = 7
EXIT_TEMPORARY = 8
EXIT_INTERRUPTED = 9
EXIT_SERVICE = 10

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_INTERNAL: "internal error (a bug: please report it)",
    EXIT_USAGE: "bad command-line arguments",
    EXIT_CONFIG: "bad configuration, or a directory that cannot be written",
    EXIT_LEDGER: "privacy ledger corrupt or unreadable (releases stop; it is never reset)",
    EXIT_INSTANCE: "another cpu-tracker already runs on this state directory",
    EXIT_COOLDOWN: "cooldown: schedule.every_seconds has not elapsed since the last release",
    EXIT_BUDGET: "privacy budget exhausted (grant more with 'budget grant')",
    EXIT_TEMPORARY: (
        "temporary failure: an output or the ledger could not be written, the noise could not be "
        "drawn, or a secure round ended early"
    ),
    EXIT_INTERRUPTED: "interrupted by a signal before anything was released",
    EXIT_SERVICE: "service file not written or removed (it exists, or no rights to write there)",
}

_ERROR_CODES: dict[type[CpuTrackerError], int] = {
    UsageError: EXIT_USAGE,
    ConfigError: EXIT_CONFIG,
    LedgerCorruptError: EXIT_LEDGER,
    AnotherInstanceError: EXIT_INSTANCE,
    CooldownError: EXIT_COOLDOWN,
    BudgetExhaustedError: EXIT_BUDGET,
    OutputError: EXIT_TEMPORARY,
    LedgerUnavailableError: EXIT_TEMPORARY,
    RoundEndedError: EXIT_TEMPORARY,
    NoiseUnavailableError: EXIT_TEMPORARY,
    Interrupted: EXIT_INTERRUPTED,
    ServiceError: EXIT_SERVICE,
}


def exit_code_for(error: CpuTrackerError) -> int:
    """The code of the nearest class in the error's MRO that has one: a subclass inherits it."""
    return next((_ERROR_CODES[k] for k in type(error).__mro__ if k in _ERROR_CODES), EXIT_INTERNAL)


# A restart cannot fix these: bad arguments, a bad config, a corrupt ledger, another instance.
NO_RESTART = (EXIT_USAGE, EXIT_CONFIG, EXIT_LEDGER, EXIT_INSTANCE)
