"""The original SyftBox member's approach, rewritten from its description for the overhead benchmark.

One fresh Python process per release: import psutil and diffprivlib, take 50
``psutil.cpu_percent()`` readings 0.1 s apart (the first is a meaningless 0.0), release
``diffprivlib.tools.mean`` of them, and write the files in place, non-atomically. Not part of
cpu-tracker; it exists only to be measured beside it (benchmarks/overhead.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import diffprivlib
import psutil


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("original-output")
    values = []
    while len(values) < 50:
        values.append(psutil.cpu_percent())
        time.sleep(0.1)
    noisy = float(diffprivlib.tools.mean(values, epsilon=0.5, bounds=(0, 100)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "private.json").write_text(json.dumps({"cpu": sum(values) / len(values)}))
    (out / "public.json").write_text(json.dumps({"cpu": noisy, "timestamp": time.time()}))


if __name__ == "__main__":
    main()
