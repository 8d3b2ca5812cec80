"""Cold start: CPU seconds of `import function_app` (what the Functions worker does on a cold instance).

    python -m bench.cold_start [--runs 7] [--json]

Each run is a fresh interpreter; its CPU (user + system, from `os.wait4`) is compared with a fresh `python -c pass`
run the same way, and the median of the differences is reported with the target (0.8 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.8


def cpu_seconds(code: str) -> float:
    """User + system CPU of one fresh interpreter running `code` in the project directory."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"`python -c {code!r}` exited with {proc.returncode}")
    return usage.ru_utime + usage.ru_stime


def measure(runs: int) -> dict[str, float]:
    imports = [cpu_seconds("import function_app") for _ in range(runs)]
    empties = [cpu_seconds("pass") for _ in range(runs)]
    cost = statistics.median(imports) - statistics.median(empties)
    return {
        "runs": runs,
        "import_function_app_cpu_seconds": round(statistics.median(imports), 3),
        "python_pass_cpu_seconds": round(statistics.median(empties), 3),
        "cold_start_cpu_seconds": round(cost, 3),
        "target_seconds": TARGET_SECONDS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args(argv)
    result = measure(args.runs)
    sys.stdout.write(json.dumps(result, indent=None if args.json else 2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
