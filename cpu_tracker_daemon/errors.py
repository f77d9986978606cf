"""Exception types, each carrying its exit code and, for a refusal that ends one cycle, its
outcome. Each str() is one sentence a user can act on."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar

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

# A restart cannot fix these: bad arguments, a bad config, a corrupt ledger, another instance.
NO_RESTART = (EXIT_USAGE, EXIT_CONFIG, EXIT_LEDGER, EXIT_INSTANCE)


class Outcome(StrEnum):
    """How one release cycle ended: logged as ``cycle.outcome``, counted in the metrics."""

    RELEASED = "released"
    BUDGET_EXHAUSTED = "budget_exhausted"
    COOLDOWN = "cooldown"
    INTERRUPTED = "interrupted"
    WRITE_FAILED = "write_failed"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    ROUND_ENDED = "round_ended"
    NOISE_FAILED = "noise_failed"


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped: a hostile name cannot break the line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class CpuTrackerError(Exception):
    """Base class; str() is one sentence a user can act on.

    ``exit_code`` is what the command line exits with; ``outcome``, where it is not None, makes
    the error a refusal: it ends one cycle without a release and the daemon keeps running."""

    exit_code: ClassVar[int] = EXIT_INTERNAL
    outcome: ClassVar[Outcome | None] = None

    def lines(self) -> list[str]:
        """What the command prints: one line."""
        return [str(self)]

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its message and fields, not its constructor's arguments (which differ by
        # type): an error from a worker process must reach the parent intact, or
        # multiprocessing's result thread dies on it and the pool waits forever.
        return (_rebuild, (type(self), self.args, dict(vars(self))))


def _rebuild(cls: type[CpuTrackerError], args: tuple[Any, ...], fields: dict[str, Any]) -> CpuTrackerError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    vars(error).update(fields)
    return error


class UsageError(CpuTrackerError):
    """The command line is wrong."""

    exit_code = EXIT_USAGE


class DeltaCapError(UsageError):
    """A grant that would raise a cap's delta past what the daemon will defend."""

    def __init__(self, cap: str, total: float, limit: float) -> None:
        self.cap, self.total, self.limit = cap, total, limit
        super().__init__(
            f"that grant would raise the {cap} cap's delta to {total:g}, above the most this daemon "
            f"allows ({limit:g}); grant epsilon instead, or a smaller delta"
        )


MAX_PROBLEMS = 20  # a file of junk has thousands: the first ones say what is wrong
MAX_PROBLEM_CHARS = 1000  # a problem quoting megabytes of the file is cut to this


class ConfigError(CpuTrackerError):
    """The configuration is invalid; every problem is reported at once (the first
    :data:`MAX_PROBLEMS` of them shown, each at most :data:`MAX_PROBLEM_CHARS` long)."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = [_cut(one_line(problem)) for problem in problems]
        super().__init__("invalid configuration: " + "; ".join(self._shown()))

    def _shown(self) -> list[str]:
        more = len(self.problems) - MAX_PROBLEMS
        return self.problems[:MAX_PROBLEMS] + ([f"and {more} more problems"] if more > 0 else [])

    def lines(self) -> list[str]:
        """For a terminal: one line, or a header and one line per problem."""
        if len(self.problems) == 1:
            return [str(self)]
        return [f"invalid configuration ({len(self.problems)} problems):"] + [f"  {p}" for p in self._shown()]


def _cut(text: str) -> str:
    if len(text) <= MAX_PROBLEM_CHARS:
        return text
    return text[: MAX_PROBLEM_CHARS - 20] + f"... ({len(text)} chars)"


class StateAccessError(ConfigError):
    """The state directory is another user's, and this one may not use it."""

    def __init__(self, directory: str, owner: str, uid: int) -> None:
        self.directory, self.owner, self.uid = directory, owner, uid
        run_as = "sudo cpu-tracker ..." if owner == "root" else f"sudo -u {owner} cpu-tracker ..."
        CpuTrackerError.__init__(
            self,
            f"the state in {directory} belongs to {owner}, and this user (uid {uid}) may not use it; "
            f"run the command as {owner} ({run_as}), or set paths.data_dir to a directory of your own",
        )
        self.problems = [str(self)]


class LedgerCorruptError(CpuTrackerError):
    """The privacy ledger cannot be trusted; releases stop until a person looks at it."""

    exit_code = EXIT_LEDGER

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"privacy ledger {path} is unusable ({reason}); releases are stopped: "
            "restore it from a backup or move it aside knowingly (the ledger is never reset "
            "automatically)"
        )


class PromiseChangedError(ConfigError):
    """The config asks for releases that protect something else than the ledger's have."""

    def __init__(self, path: str, recorded: str, configured: str) -> None:
        self.path, self.recorded, self.configured = path, recorded, configured
        CpuTrackerError.__init__(
            self,
            f"the privacy ledger {path} accounts releases under {recorded}, and the config asks for "
            f"{configured}: their budgets cannot be added up; restore those privacy and sampling "
            "settings, or start a new ledger with 'cpu-tracker ledger reset' (see docs/budget-and-ledger.md)",
        )
        self.problems = [str(self)]


class LedgerUnavailableError(CpuTrackerError):
    """The ledger is sound but cannot be used right now (locked, disk full, read-only)."""

    exit_code = EXIT_TEMPORARY
    outcome = Outcome.LEDGER_UNAVAILABLE

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"privacy ledger {path} cannot be used right now ({reason}); nothing was released: "
            "fix the cause and the next cycle retries"
        )


class AnotherInstanceError(CpuTrackerError):
    """Another process holds the state directory's lock."""

    exit_code = EXIT_INSTANCE

    def __init__(self, lock_path: str, holder: str) -> None:
        self.lock_path = lock_path
        self.holder = holder
        super().__init__(
            f"another cpu-tracker ({holder}) already holds {lock_path}; stop it first, "
            "or give this one a different paths.data_dir"
        )


class CooldownError(CpuTrackerError):
    """The execution interval since the last release has not elapsed."""

    exit_code = EXIT_COOLDOWN
    outcome = Outcome.COOLDOWN

    def __init__(self, due_at: str) -> None:
        self.due_at = due_at
        super().__init__(
            f"the last release was less than schedule.every_seconds ago; the next one is due at "
            f"{due_at} (use --force to skip the cooldown; the budget still applies)"
        )


class BudgetExhaustedError(CpuTrackerError):
    """A release would exceed a privacy-budget cap."""

    exit_code = EXIT_BUDGET
    outcome = Outcome.BUDGET_EXHAUSTED

    def __init__(self, cap: str, spent: float, limit: float, needed: float) -> None:
        self.cap = cap
        self.spent = spent
        self.limit = limit
        self.needed = needed
        remedy = (
            "wait for older spends to leave the rolling window, or grant more with "
            "'cpu-tracker budget grant EPSILON --cap window --reason TEXT'"
            if cap == "window"
            else "grant more with 'cpu-tracker budget grant EPSILON --reason TEXT'"
        )
        super().__init__(
            f"privacy budget exhausted: the {cap} cap allows epsilon {limit:g} and {spent:g} is "
            f"spent, so a release costing {needed:g} does not fit; {remedy}"
        )


class OutputError(CpuTrackerError):
    """An output file could not be written."""

    exit_code = EXIT_TEMPORARY
    outcome = Outcome.WRITE_FAILED

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"cannot write {path} ({reason}); free space or fix permissions, and the same "
            "noisy value will be published on the next cycle"
        )


class StdoutError(OutputError):
    """Standard output cannot be written (a full disk, ``> /dev/full``): what the command had to
    say is lost, and nothing else."""

    def __init__(self, reason: str) -> None:
        self.path, self.reason = "standard output", reason
        CpuTrackerError.__init__(
            self,
            f"cannot write to standard output ({reason}); what this command printed is lost, nothing "
            "else: send its output where there is room",
        )


class RoundEndedError(CpuTrackerError):
    """A secure-aggregation round ended before this member's masked value was sent."""

    exit_code = EXIT_TEMPORARY
    outcome = Outcome.ROUND_ENDED

    def __init__(self, reason: str, spent: bool = False) -> None:
        self.reason = reason
        self.spent = spent
        kept = "its spend is kept" if spent else "nothing was spent"
        super().__init__(
            f"the secure round ended before this member's value was sent ({one_line(reason)}); {kept}, "
            "and the member takes part in the next round"
        )


class MechanismUnavailableError(ConfigError):
    """The configured mechanism's library cannot be loaded here."""

    def __init__(self, mechanism: str, reason: str) -> None:
        self.mechanism, self.reason = mechanism, reason
        CpuTrackerError.__init__(
            self,
            f"privacy.mechanism = {mechanism!r} cannot draw noise here ({one_line(reason)}); nothing "
            'was spent: install diffprivlib for this Python (a dependency), or choose "laplace"',
        )
        self.problems = [str(self)]


class NoiseUnavailableError(CpuTrackerError):
    """The noise for a reserved release could not be drawn; its spend stays counted."""

    exit_code = EXIT_TEMPORARY
    outcome = Outcome.NOISE_FAILED

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the noise could not be drawn ({one_line(reason)}); nothing was released, this "
            "window's budget stays spent, and the next cycle draws for a new window"
        )


class SecureRoundError(CpuTrackerError):
    """The aggregator's round ended in its child process without a record: it could not start,
    stopped on an error, crashed, or was killed. The round publishes nothing; the next one runs
    in a new child."""

    exit_code = EXIT_TEMPORARY

    def __init__(self, detail: str, traceback: str = "") -> None:
        self.detail = detail
        self.traceback = traceback  # the child's, when it crashed
        super().__init__(one_line(detail))


class Interrupted(CpuTrackerError):
    """A stop was requested while a cycle was waiting."""

    exit_code = EXIT_INTERRUPTED
    outcome = Outcome.INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted by a stop request before anything was released")


class ServiceError(CpuTrackerError):
    """A service definition could not be rendered, installed or removed."""

    exit_code = EXIT_SERVICE
