"""Coverage-guided fuzzing (atheris, libFuzzer) of the three parsers of hostile input.

    python benchmarks/fuzz.py                       # each target for 60 s
    python benchmarks/fuzz.py --seconds 300 config  # one target, longer
    python benchmarks/fuzz.py --runs 3000           # a fixed number of inputs (the test suite's subset)

Targets, each fed raw bytes as a file on disk and read by the real code path:

- ``config``: ``load_config`` on a config file. Must return a Config or raise ConfigError whose every
  problem is one printable line.
- ``peer``: ``peers.read_release`` on a peer's ``cpu_tracker.json``. Must return a release with a
  finite value, or raise Skipped with a reason.
- ``request``: ``budget_requests.parse`` on a budget-request file. Must return a Request within the limits,
  or raise Rejected with a reason.

Anything else (another exception, a broken property) is a crash: libFuzzer stops, saves the input
under the output directory, and this script exits 1. Each target starts from a seed corpus of valid
inputs written by the package itself, so the fuzzer begins inside the interesting paths.
Hypothesis property tests in ``tests/`` cover the same parsers on every CI run; this finds what
random generation does not, by following coverage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

TARGETS = ("config", "peer", "request")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
READER = "aggregator@example.org"
PEER = "alice@example.org"
REQUEST_ID = "req-0001-fuzz"


def seeds(target: str) -> list[bytes]:
    """Valid inputs, written by the package's own code where it has a writer."""
    from cpu_tracker_daemon.config import load_config, to_toml

    if target == "config":
        full = to_toml(load_config(None, environ={"HOME": "/h"})).encode()
        return [
            full,
            b'[privacy]\nmechanism = "gaussian"\nsigma = 40.0\ndelta = 1e-6\n',
            b'[syftbox]\ndir = "/tmp/SyftBox"\nemail = "a@b.org"\nreaders = ["c@d.org"]\n',
            b"[aggregator]\nenabled = true\nevery_seconds = 60\n",
        ]
    if target == "peer":
        return [json.dumps(_release(m)).encode() for m in ("laplace", "gaussian")]
    return [json.dumps(_request()).encode()]


# Tokens libFuzzer may splice in (its -dict): the grammar's punctuation and escapes, and the
# values at the edges of each parser's checks.
_TOKENS = {
    "config": [
        "[",
        "]",
        "[[",
        "=",
        '"',
        "'",
        '"""',
        ".",
        ",",
        "\\n",
        "\\t",
        "\\u0007",
        "\\u2028",
        "\\U0001F600",
        "true",
        "false",
        "inf",
        "-inf",
        "nan",
        "1e308",
        "-0",
        "0x10",
        "1979-05-27",
        "~/",
        "../",
    ],
    "json": [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        '"',
        "\\u0000",
        "\\ud800",
        "\\n",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-0",
        "true",
        "null",
        "+00:00",
        "Z",
        "+14:00",
        "-12:00",
        "2026-06-01T11:50:00",
        "T",
        "laplace",
        "gaussian",
        "snapping",
        "window",
        "sample",
    ],
}


def dictionary(target: str) -> str:
    """The -dict file for ``target``: tokens above plus every key name the parser knows."""
    from cpu_tracker_daemon import config
    from cpu_tracker_daemon.budget import requests as budget_requests

    if target == "config":
        names = [*config.KEYS, *(k for keys in config.KEYS.values() for k in keys)]
        tokens = _TOKENS["config"]
    else:
        document = _release("laplace") if target == "peer" else _request()
        names = (
            sorted(budget_requests._MESSAGE_KEYS | budget_requests._BODY_KEYS)
            if target == "request"
            else _keys(document)
        )
        tokens = _TOKENS["json"]
    entries = [*tokens, *names, *(f'"{n}"' for n in names)]
    return "".join(f"{json.dumps(e)}\n" for e in entries)


def _keys(document: object) -> list[str]:
    if not isinstance(document, dict):
        return []
    return sorted({*document, *(k for v in document.values() for k in _keys(v))})


def _release(mechanism: str) -> dict[str, object]:
    """A release as the member writes it: its own record builder and calibration."""
    from cpu_tracker_daemon.config import load_config
    from cpu_tracker_daemon.privacy.mechanisms import Noisy, calibrate
    from cpu_tracker_daemon.records import public_record

    config = load_config(None, environ={"HOME": "/h"})
    privacy = replace(config.privacy, mechanism=mechanism)
    calibration = calibrate(privacy, config.sampling.samples)
    end = NOW - timedelta(minutes=10)
    return public_record(
        "0123456789abcdef0123456789abcdef",
        Noisy(41.5, 4150),
        end - timedelta(seconds=config.sampling.window_seconds),
        end,
        config.sampling,
        calibration,
    )


def _request() -> dict[str, object]:
    from cpu_tracker_daemon.budget.requests import request_message

    return request_message(
        REQUEST_ID, READER, "syft://member@example.org/app_data/cpu_tracker/rpc/budget", "lifetime", 5.0,
        "one more week of network load", NOW - timedelta(hours=1), NOW + timedelta(days=3),
    )  # fmt: skip


class PropertyBroken(Exception):
    """A parser returned or raised something its contract forbids; libFuzzer records a crash."""


def require(condition: bool, what: str) -> None:
    if not condition:
        raise PropertyBroken(what)


def one_input(target: str, work: Path) -> Callable[[bytes], None]:
    """The callback for ``target``: write the bytes where the real code reads them, then check."""
    from cpu_tracker_daemon.budget import requests as budget_requests
    from cpu_tracker_daemon.config import load_config
    from cpu_tracker_daemon.errors import ConfigError
    from cpu_tracker_daemon.network import peers
    from cpu_tracker_daemon.untrusted import NotAccepted

    if target == "config":
        path = work / "config.toml"

        def check(data: bytes) -> None:
            path.write_bytes(data)
            try:
                config = load_config(path, environ={"HOME": "/h"})
            except ConfigError as exc:
                require(bool(exc.problems), "ConfigError without a problem")
                for problem in exc.problems:
                    require(bool(problem) and problem.isprintable(), f"not one printable line: {problem!r}")
                return
            require(config.privacy.upper > config.privacy.lower, "bounds out of order")
            require(config.sampling.samples >= 1, "no samples")

        return check

    if target == "peer":
        datasites = work / "datasites"
        path = peers.release_path(datasites, PEER)
        path.parent.mkdir(parents=True, exist_ok=True)

        def check(data: bytes) -> None:
            path.write_bytes(data)
            try:
                found = peers.read_release(datasites, PEER, NOW, timedelta(hours=2))
            except NotAccepted as why:
                require(bool(str(why)), "NotAccepted without a reason")
                return
            require(found.noise_stddev > 0, f"accepted without noise: {found}")
            require(math.isfinite(found.cpu), f"accepted a non-finite value: {found}")

        return check

    box = work / "rpc" / "budget" / READER  # a request is read from its sender's own folder
    box.mkdir(parents=True, exist_ok=True)
    path = box / f"{REQUEST_ID}{budget_requests.REQUEST_SUFFIX}"

    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            found = budget_requests.parse(path, [READER], NOW)
        except NotAccepted as why:
            require(bool(str(why)), "NotAccepted without a reason")
            return
        require(0 < found.epsilon <= budget_requests.MAX_EPSILON, f"accepted epsilon out of range: {found}")
        require(found.requester == READER, f"accepted an unknown requester: {found}")

    return check


def worker(target: str, libfuzzer_args: list[str]) -> None:
    """Runs inside the child: instrument the package, then hand control to libFuzzer (which exits)."""
    import atheris

    with atheris.instrument_imports(include=["cpu_tracker_daemon"]):
        import cpu_tracker_daemon.budget.requests
        import cpu_tracker_daemon.config
        import cpu_tracker_daemon.network.peers
        import cpu_tracker_daemon.storage  # noqa: F401 - instrumented for coverage
    with tempfile.TemporaryDirectory(prefix="cpu-tracker-fuzz-") as work:
        check = one_input(target, Path(work))
        atheris.Setup([sys.argv[0], *libfuzzer_args], check)
        atheris.Fuzz()


def run(target: str, out: Path, seconds: float | None, runs: int | None) -> dict[str, object]:
    """Fuzz one target in a child process; return what libFuzzer reported."""
    corpus = out / target / "corpus"
    crashes = out / target / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    tokens = out / target / "tokens.dict"
    tokens.write_text(dictionary(target))
    limits = [f"-runs={runs}"] if runs is not None else [f"-max_total_time={int(seconds or 60)}"]
    command = [
        sys.executable, __file__, "--worker", target, "--",
        *limits, "-max_len=4096", "-rss_limit_mb=1024", "-timeout=10", "-seed=1",
        f"-dict={tokens}",
        f"-artifact_prefix={crashes}/", str(corpus),
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    log = done.stderr
    runs_done = re.findall(r"Done (\d+) runs", log)
    coverage = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", log)
    return {
        "target": target,
        "exit": done.returncode,
        "runs": int(runs_done[-1]) if runs_done else None,
        "seconds": elapsed,
        "coverage": int(coverage[-1][0]) if coverage else None,
        "features": int(coverage[-1][1]) if coverage else None,
        "corpus": int(coverage[-1][2]) if coverage else None,
        "crashes": sorted(p.name for p in crashes.iterdir()),
        "tail": "\n".join(log.splitlines()[-25:]) if done.returncode != 0 else "",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[3:])
        return 0  # pragma: no cover - atheris.Fuzz exits the process
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)"
    )
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    limit.add_argument("--runs", type=int, help="a fixed number of inputs per target instead of a time")
    parser.add_argument("--out", type=Path, help="keep corpora and crashes here (default: a temp dir)")
    args = parser.parse_args(argv)
    if unknown := sorted(set(args.targets) - set(TARGETS)):
        parser.error(f"unknown target {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if importlib.util.find_spec("atheris") is None:
        print("skipped: atheris is not installed (it ships wheels for x86_64 Linux only)")
        return 0
    with tempfile.TemporaryDirectory(prefix="cpu-tracker-fuzz-") as scratch:
        out = args.out or Path(scratch)
        results = [run(t, out, args.seconds, args.runs) for t in args.targets or TARGETS]
        print("| target | inputs | seconds | inputs/s | coverage (edges) | corpus | crashes |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            rate = (r["runs"] or 0) / r["seconds"]  # type: ignore[operator]
            print(
                f"| {r['target']} | {r['runs']} | {r['seconds']:.0f} | {rate:.0f} | {r['coverage']} "
                f"| {r['corpus']} | {len(r['crashes'])} |"  # type: ignore[arg-type]
            )
        failed = [r for r in results if r["exit"] != 0 or r["crashes"]]
        for r in failed:
            print(f"\n{r['target']}: exit {r['exit']}, crash inputs {r['crashes']} in {out}\n{r['tail']}")
            if args.out is None:
                for name in r["crashes"]:  # type: ignore[attr-defined]
                    data = (out / str(r["target"]) / "crashes" / name).read_bytes()
                    print(f"{name}: {data[:300]!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
