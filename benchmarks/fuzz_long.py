"""Long fuzzing run of the image readers and the manifest parser (issue 7).

Runs ``tests/test_fuzz.py`` with many more examples per property than CI does, with fresh random
inputs (not CI's fixed ones), and writes the tally of outcomes per reader to a JSON file::

    .venv/bin/python -m benchmarks.fuzz_long --examples-per-test 2500 --out runs/fuzz_long.json

Every input either reads cleanly or raises one of the project's documented errors; any other
exception fails the run (pytest's exit status is returned) and hypothesis prints the input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz tests with ``--examples-per-test`` examples each and report the tally."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--examples-per-test",
        type=int,
        default=2500,
        help="hypothesis examples for each of the 5 fuzz properties (default 2500)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fuzz_long.json"), help="tally JSON to write")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tally_path = args.out.with_suffix(".tally.json")
    environment = {
        **os.environ,
        "CXR_ANOMALY_FUZZ_EXAMPLES": str(args.examples_per_test),
        "CXR_ANOMALY_FUZZ_TALLY": str(tally_path.resolve()),
    }
    started = time.perf_counter()
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
        cwd=REPOSITORY_ROOT,
        env=environment,
    )
    seconds = time.perf_counter() - started
    tally = json.loads(tally_path.read_text()) if tally_path.is_file() else {}
    undocumented = "none (pytest passed)" if finished.returncode == 0 else "see the pytest output above"
    summary = {
        "examples_per_test": args.examples_per_test,
        "inputs": sum(tally.values()),
        "outcomes": tally,
        "undocumented_exceptions": undocumented,
        "pytest_exit_status": finished.returncode,
        "seconds": round(seconds, 1),
    }
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return finished.returncode


if __name__ == "__main__":
    sys.exit(main())
