"""Hostile configuration files and odd command lines through the installed ``cpu-tracker``.

    python benchmarks/fuzz_config.py                       # 1,000 configs, seed 0 (about 6,050 runs)
    python benchmarks/fuzz_config.py --count 50 --seed 7   # a smaller run; the suite runs one
    python benchmarks/fuzz_config.py --only 412 --keep     # one case again, its files kept

Each generated config (a fast, valid base with one to three hostile changes: a number at the
float limits or past its bound, a path with a NUL or too long or naming a device, a FIFO, a
directory, a list of thousands of addresses, a table where a value belongs, TOML no parser can
hold, bytes that are not UTF-8...) goes through the issue's five commands, ``config check``,
``status``, ``budget plan``, ``once`` and ``aggregate``, in its own directory; then one odd
command line (``--config /dev/zero``, a FIFO, a grant of 1e308, a missing argument, an
environment naming a FIFO, stdout on /dev/full...), and the first case every one of them. Every
run is the real command in a subprocess, under a memory limit, with a timeout.

Counted, and each a failure: an internal error (exit 1), a traceback, a hang (the timeout), a
death by a signal, an exit code the README does not document, a temporary file left behind, and
an error that is not one line (``cpu-tracker: ...``, or a header and one line per problem).
Prints the counts, and the first few of each failure with the case that made it; exits 1 if any.
Nothing is written outside the work directory: every path a case names is under it, or a device
that takes writes harmlessly (/dev/null, /dev/full).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpu_tracker_daemon.config import KEYS, MAXIMA, YEAR
from cpu_tracker_daemon.errors import EXIT_CODES, EXIT_INTERNAL

COMMANDS = (("config", "check"), ("status",), ("budget", "plan"), ("once",), ("aggregate",))
BASE: dict[str, dict[str, Any]] = {
    "paths": {"data_dir": "data"},
    "sampling": {"samples": 2, "interval_seconds": 0.01},
    "schedule": {"every_seconds": 1},
    "budget": {"lifetime_epsilon": 1000, "window_epsilon": 1000},
    "syftbox": {"dir": "SyftBox", "email": "me@example.org", "readers": ["agg@example.org"]},
}
FLOAT_LIMIT = 1.7976931348623157e308
NUMBERS: list[Any] = [
    0, -0.0, -1, 5e-324, 1e-300, 0.5, 1e15, 1e300, FLOAT_LIMIT, -FLOAT_LIMIT, -1e300,
    float("inf"), float("-inf"), float("nan"), 2**63 - 1, -(2**63), YEAR, YEAR + 1, 86_401, 1e9 + 1,
    True, "12", [1.0], {"a": 1},
]  # fmt: skip
INTEGERS: list[Any] = [0, -1, 1, 3, 100_001, 2**63 - 1, -(2**63), 1.5, FLOAT_LIMIT, "5", True, [2]]
STRINGS: list[Any] = ["", "x", "a\x00b", "\n\x1b[31m", "z" * 5000, "laplace", "window", "ünï", 7, ["x"]]
EMAILS: list[Any] = [
    "a@example.org", "no-at-sign", "a" * 250 + "@example.org", "a@b", "x\x00@example.org", "", 5,
]  # fmt: skip


def _paths(rng: random.Random) -> Any:
    """A hostile path value: relative ones land under the case's own directory; absolute ones
    name only devices that take writes harmlessly, or the case's own odd files."""
    return rng.choice(
        [
            "",
            "rel/dir",
            "data\x00x",
            "a" * 300,
            "/".join(["b" * 200] * 8),
            "~/in-home",
            "~no-such-user-here/x",
            "/dev/null",
            "/dev/full",
            "fifo",
            "afile",
            "afile/below",
            "adir",
            "loop",
            "dangling",
            "ünïcode dir",
            42,
            ["p"],
        ]
    )


def _emails(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return [f"r{i}@example.org" for i in range(rng.choice([1000, 1001, 5000]))]
    if kind == 1:
        return [rng.choice(EMAILS) for _ in range(rng.randint(1, 4))]
    if kind == 2:
        return ["dup@example.org"] * 3
    if kind == 3:
        return "one@example.org"
    if kind == 4:
        return [["nested@example.org"]]
    return []


def hostile_value(key: str, kind: str, rng: random.Random) -> Any:
    """A value of ``key`` (of schema ``kind``) chosen to hurt."""
    if kind == "float":
        near = MAXIMA.get(key)
        return rng.choice([*NUMBERS, near, near * 1.0000001] if near else NUMBERS)
    if kind == "int":
        return rng.choice(INTEGERS)
    if kind == "bool":
        return rng.choice([True, False, 1, "true"])
    if kind == "path":
        return _paths(rng)
    if kind == "emails":
        return _emails(rng)
    return rng.choice([*STRINGS, *EMAILS])


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"


def render(tables: dict[str, Any]) -> str:
    out = []
    for section, table in tables.items():
        if not isinstance(table, dict):
            out.insert(0, f"{section} = {toml_value(table)}")  # before any table: a top-level value
            continue
        out.append(f"[{section}]")
        out.extend(f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items())
    return "\n".join(out) + "\n"


# A valid file's window is short: `once` samples it, and a default 50 s window would read as a hang.
FAST = b"[sampling]\nsamples = 2\ninterval_seconds = 0.01\n[schedule]\nevery_seconds = 1\n"
RAW_TEXTS = [
    b"[sampling]\nsamples = " + b"9" * 5000 + b"\n",
    b"x = " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    b"x = " + b"{a=" * 3000 + b"1" + b"}" * 3000 + b"\n",
    b"\xff\xfe[paths]\n",
    b'[paths]\ndata_dir = "d"\n\x00\n',
    b"[sampling\n",
    b"[sampling]\nsamples = 2\n[sampling]\nsamples = 3\n",
    b"\xef\xbb\xbf" + FAST,
    b"[[sampling]]\nsamples = 2\n",
    FAST + b"[paths]\r\ndata_dir = 'd'\r\n",
    FAST + b"# only a comment\n" * 50_000,
    b"".join(b'"k%d" = 1\n' % i for i in range(5000)),
]


def _table(tables: dict[str, Any], section: str) -> dict[str, Any]:
    if not isinstance(tables.get(section), dict):
        tables[section] = {}
    table: dict[str, Any] = tables[section]
    return table


def generate(index: int, seed: int) -> tuple[bytes, dict[str, Any]]:
    """Case ``index`` of run ``seed``: the config file's bytes and what the case is, for a report."""
    rng = random.Random(f"{seed}-{index}")
    if rng.random() < 0.08:
        raw = rng.choice(RAW_TEXTS)
        return raw, {"raw": raw[:60].decode("utf-8", "replace")}
    tables: dict[str, Any] = json.loads(json.dumps(BASE))
    changes = []
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.8:
            section = rng.choice(list(KEYS))
            key = rng.choice(list(KEYS[section]))
            value = hostile_value(f"{section}.{key}", KEYS[section][key], rng)
            _table(tables, section)[key] = value
            changes.append(f"{section}.{key}")
        elif roll < 0.9:
            section = rng.choice(list(KEYS))
            tables[section] = rng.choice([5, "x", [1, 2], True])
            changes.append(f"[{section}] as a value")
        else:
            section = rng.choice([*KEYS, "bogus"])
            _table(tables, section)[rng.choice(["unknown", "Samples", "a\nb"])] = 1
            changes.append(f"unknown key in [{section}]")
    if rng.random() < 0.2:
        tables.pop("syftbox", None)
    secure = tables.get("secure_aggregation")
    if isinstance(secure, dict) and secure.get("enabled") is True:
        # A member's `once` waits for its round, up to two intervals by design: keep them 1 s.
        _table(tables, "schedule")["every_seconds"] = 1
    return render(tables).encode("utf-8", "surrogatepass"), {"changed": changes}


def odd_command_lines(case: Path, config: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Odd command lines and environments, each naming only files of this case. ``FULL_STDOUT``
    in the environment stands for ``> /dev/full``, with the output buffered or not."""
    fifo, adir, loop = str(case / "fifo"), str(case / "adir"), str(case / "loop")
    c = str(config)
    return [
        (["--config", "/dev/zero", "status"], {}),
        (["--config", "/dev/zero", "once"], {}),
        (["--config", fifo, "config", "check"], {}),
        (["--config", fifo, "once"], {}),
        (["status"], {"CPU_TRACKER_CONFIG": fifo}),
        (["status"], {"CPU_TRACKER_CONFIG": "/dev/zero"}),
        (["--config", adir, "status"], {}),
        (["--config", loop, "status"], {}),
        (["--config", str(case / ("n" * 300)), "status"], {}),
        (["--config", str(case / "missing.toml"), "budget", "show"], {}),
        (["--config", "", "status"], {}),
        (["--config"], {}),
        (["--config=", "status"], {}),
        (["--config", c, "bogus-command"], {}),
        (["--config", c, "status", "--json", "--json"], {}),
        (["--config", c, "budget", "grant", "nan", "--reason", "x", "--yes"], {}),
        (["--config", c, "budget", "grant", "inf", "--reason", "x", "--yes"], {}),
        (["--config", c, "budget", "grant", "1e308", "--reason", "x", "--yes"], {}),
        (["--config", c, "budget", "grant", "1", "--reason", "", "--yes"], {}),
        (["--config", c, "budget", "grant", "1", "--reason", "\x1b[2J", "--delta", "0.9", "--yes"], {}),
        (["--config", c, "budget", "approve", "../../etc/passwd"], {}),
        (["--config", c, "budget", "deny", "x" * 5000, "--reason", "no"], {}),
        (["--config", c, "budget", "requests", "--json"], {}),
        (["--config", c, "ledger", "reset", "--reason", ""], {}),
        (["--config", c, "ledger", "verify"], {}),
        (["--config", c, "config", "show", "--json"], {}),
        (["--config", fifo, "config", "init", "--force"], {}),
        (["--config", "/dev/full", "config", "init", "--force"], {}),
        (["--config", adir, "config", "init"], {}),
        (["--config", c, "once", "--force"], {}),
        (["--config", c, "status"], {"SYFTBOX_CLIENT_CONFIG_PATH": fifo}),
        (["status"], {"SYFTBOX_CLIENT_CONFIG_PATH": "/dev/zero"}),
        (["--system", "status"], {}),
        (["--system", "config", "check"], {}),
        (["service", "print", "--manager", "nonsense"], {}),
        (["--version"], {}),
        (["--config", c, "status"], {FULL_STDOUT: "1"}),
        (["--config", c, "budget", "plan", "--json"], {FULL_STDOUT: "1", "PYTHONUNBUFFERED": ""}),
        (["--config", c, "once", "--force"], {FULL_STDOUT: "1"}),
        (["--config", c, "once", "--force"], {FULL_STDOUT: "1", "PYTHONUNBUFFERED": ""}),
        (["--help"], {FULL_STDOUT: "1", "PYTHONUNBUFFERED": ""}),
        (["--config", "/dev/null", "config", "check"], {}),
        (["--config", "/dev/null", "status"], {"STATE_DIRECTORY": str(case / ("s" * 300))}),
        (["--config", "/dev/null", "once"], {"STATE_DIRECTORY": str(case / "afile")}),
        (["--config", "/dev/null", "status"], {"HOME": ""}),
        (["--config", "/dev/null", "status"], {"HOME": "relative/home"}),
        (["--config", "/dev/null", "status"], {"XDG_DATA_HOME": str(case / "adir" / ("x" * 300))}),
        (["status"], {"CONFIGURATION_DIRECTORY": str(case / "fifo")}),
        (["status"], {"XDG_CONFIG_HOME": str(case / "loop")}),
        (["--config", c, "once"], {"LOGS_DIRECTORY": str(case / "fifo")}),
        (["--config", c, "config", "check"], {"XDG_CACHE_HOME": str(case / "afile")}),
    ]


def prepare_case(case: Path, data: bytes) -> Path:
    """The case's directory: its config, a home, and the odd files its paths may name."""
    case.mkdir(parents=True)
    (case / "home").mkdir()
    (case / "afile").write_text("not a directory\n")
    (case / "adir").mkdir()
    os.mkfifo(case / "fifo")
    (case / "loop").symlink_to(case / "loop")
    (case / "dangling").symlink_to(case / "gone")
    config = case / "c.toml"
    config.write_bytes(data)
    return config


FULL_STDOUT = "FUZZ_STDOUT_TO_DEV_FULL"
LIMIT_AND_EXEC = (
    "import os, resource, sys; limit = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); os.execv(sys.argv[2], sys.argv[2:])"
)


class Runner:
    def __init__(self, executable: str, timeout: float, memory_mb: int) -> None:
        self.executable, self.timeout, self.memory = executable, timeout, memory_mb << 20

    def run(self, argv: list[str], case: Path, env_extra: dict[str, str]) -> dict[str, Any]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(case / "home"),
            "XDG_CACHE_HOME": str(case / "home" / ".cache"),
            "LANG": "C.UTF-8",
            "TZ": "UTC",
            "PYTHONUNBUFFERED": "1",
            # Kept, so that another checkout of the package can be run: PYTHONPATH=../old ...
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
            **env_extra,
        }
        full = env.pop(FULL_STDOUT, None) is not None

        # The memory limit is set by a small exec wrapper, not a preexec_fn: the cases run in threads.
        sink = Path("/dev/full").open("wb") if full else None  # noqa: SIM115 - closed once passed on
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", LIMIT_AND_EXEC, str(self.memory), self.executable, *argv],
                cwd=case,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink or subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a hang is killed with everything it started
            )
        finally:
            if sink is not None:
                sink.close()
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            return {"argv": argv, "code": None, "stderr": err.decode("utf-8", "replace")}
        return {"argv": argv, "code": proc.returncode, "stderr": err.decode("utf-8", "replace")}


def not_one_line(stderr: str) -> bool:
    """An error that is not one ``cpu-tracker:`` line (or a header and one line per problem);
    the JSON log lines ``aggregate`` writes to stderr are not counted."""
    lines = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    if not lines:
        return False
    first, rest = lines[0], lines[1:]
    if not first.startswith("cpu-tracker: "):
        return True
    return bool(rest) and not (first.endswith("problems):") and all(r.startswith("  ") for r in rest))


def leftovers(case: Path) -> list[str]:
    return [
        str(p.relative_to(case)) for p in case.rglob(".*.tmp") if "home" not in p.relative_to(case).parts[:1]
    ]


def run_case(index: int, seed: int, workdir: Path, runner: Runner, keep: bool) -> list[dict[str, Any]]:
    data, what = generate(index, seed)
    case = workdir / f"{index:05d}"
    config = prepare_case(case, data)
    results = []
    for command in COMMANDS:
        results.append(runner.run(["--config", str(config), *command], case, {}))
    odd = odd_command_lines(case, config)
    # Case 0 runs every odd command line, so that even a short run tries each once; the others one.
    chosen = odd if index == 0 else [odd[random.Random(f"{seed}-{index}-odd").randrange(len(odd))]]
    results.extend(runner.run(argv, case, env) for argv, env in chosen)
    left = leftovers(case)
    for result in results:
        result.update(case=index, what=what, leftovers=left)
    if not keep:
        shutil.rmtree(case, ignore_errors=True)
    return results


def classify(results: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "runs": len(results),
        "exits": Counter(),
        "internal": [],
        "tracebacks": [],
        "hangs": [],
        "signals": [],
        "undocumented": [],
        "leftovers": [],
        "not_one_line": [],
    }
    seen_leftovers = set()
    for r in results:
        code, stderr = r["code"], r["stderr"]
        example = {"case": r["case"], "argv": r["argv"][2:] if r["argv"][:1] == ["--config"] else r["argv"]}
        example["stderr"] = stderr.strip().splitlines()[-1][:300] if stderr.strip() else ""
        if code is None:
            counts["hangs"].append(example)
            continue
        counts["exits"][code] += 1
        if code == EXIT_INTERNAL:
            counts["internal"].append(example)
        if code < 0:
            counts["signals"].append(example)
        elif code not in EXIT_CODES:
            counts["undocumented"].append(example)
        if "Traceback (most recent call last)" in stderr:
            counts["tracebacks"].append(example)
        if code != 0 and not_one_line(stderr):
            counts["not_one_line"].append(example)
        if r["leftovers"] and r["case"] not in seen_leftovers:
            seen_leftovers.add(r["case"])
            counts["leftovers"].append({**example, "stderr": ", ".join(r["leftovers"])})
    return counts


FAILURES = ("internal", "tracebacks", "hangs", "signals", "undocumented", "leftovers", "not_one_line")


def installed_executable() -> str:
    beside = Path(sys.executable).parent / "cpu-tracker"
    return str(beside) if beside.exists() else shutil.which("cpu-tracker") or "cpu-tracker"


def run(
    count: int,
    seed: int = 0,
    workdir: Path | None = None,
    jobs: int = 2,
    timeout: float = 30.0,
    memory_mb: int = 1024,
    executable: str | None = None,
    only: int | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run ``count`` cases (or case ``only``) and return the counts (lists of examples per failure)."""
    runner = Runner(executable or installed_executable(), timeout, memory_mb)
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="fuzz-config-")) if workdir is None else workdir
    indices = [only] if only is not None else list(range(count))
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            batches = list(pool.map(lambda i: run_case(i, seed, base, runner, keep), indices))
    finally:
        if own and not keep:
            shutil.rmtree(base, ignore_errors=True)
    counts = classify([r for batch in batches for r in batch])
    counts["configs"] = len(indices)
    counts["workdir"] = str(base)
    return counts


def report(counts: dict[str, Any], seed: int) -> str:
    exits = ", ".join(f"{code}: {n}" for code, n in sorted(counts["exits"].items()))
    lines = [
        f"| configs | runs | seed | {' | '.join(FAILURES)} |",
        "| --- | --- | --- |" + " --- |" * len(FAILURES),
        f"| {counts['configs']:,} | {counts['runs']:,} | {seed} | "
        + " | ".join(str(len(counts[name])) for name in FAILURES)
        + " |",
        "",
        f"exit codes: {exits}",
    ]
    for name in FAILURES:
        for example in counts[name][:5]:
            lines.append(f"{name}: case {example['case']} {example['argv']}: {example['stderr']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1000, help="generated configs (each about 6 runs)")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a run counts as a hang")
    parser.add_argument("--memory-mb", type=int, default=1024, help="each run's address-space limit")
    parser.add_argument("--executable", help="the cpu-tracker to run (default: the installed one)")
    parser.add_argument("--only", type=int, help="run this one case")
    parser.add_argument("--keep", action="store_true", help="keep the cases' directories")
    args = parser.parse_args(argv)
    counts = run(
        args.count,
        args.seed,
        jobs=args.jobs,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        executable=args.executable,
        only=args.only,
        keep=args.keep,
    )
    print(report(counts, args.seed))
    if args.keep:
        print(f"cases kept in {counts['workdir']}")
    return 1 if any(counts[name] for name in FAILURES) else 0


if __name__ == "__main__":
    sys.exit(main())
