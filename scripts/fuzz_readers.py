"""Fuzz the readers of user files and values with many more examples than the test suite runs.

    python scripts/fuzz_readers.py [--examples 10000] [--seed N] [--timeout 30] [--only NAME ...]

Runs every property of ``tests/io/test_fuzz_readers.py`` (read_table, read_events, load_interactions, timestamps,
ids: a result or ValueError/KeyError/FileNotFoundError with a message, never another exception, never a hang),
sharing ``--examples`` out among them. An example running longer than ``--timeout`` seconds counts as a hang. Prints
each property's example count, time and failures (the shrunk input included), then the total. Exit status 1 when
any property failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROPERTIES_FILE = REPO / "tests" / "io" / "test_fuzz_readers.py"


class Hang(Exception):
    """An example ran longer than --timeout seconds."""


def load_properties():
    spec = importlib.util.spec_from_file_location("fuzz_properties", PROPERTIES_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PROPERTIES


def run_property(name, body, strategy, examples: int, seed: int | None, timeout: float) -> tuple[int, str | None]:
    """``(examples run, failure text or None)`` of one property."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as seeded

    count = 0

    def on_alarm(signum, frame):
        raise Hang(f"an example ran longer than {timeout:g} s")

    def example(value):
        nonlocal count
        count += 1
        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            body(value)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    example.__name__ = name
    config = settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
                      suppress_health_check=list(HealthCheck), print_blob=True)
    test = config(given(strategy)(example))
    if seed is not None:
        test = seeded(seed)(test)
    try:
        test()
    except BaseException as error:  # noqa: BLE001 - every failure is reported, KeyboardInterrupt too
        if isinstance(error, KeyboardInterrupt):
            raise
        notes = "\n".join(getattr(error, "__notes__", []))
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        return count, f"{text}\n{notes}".strip()
    return count, None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples in total, shared out (default 10000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized, reproducible)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one example may run (default 30)")
    parser.add_argument("--only", nargs="*", default=None, help="property names (default: all)")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.timeout <= 0:
        parser.error("--examples and --timeout must be positive")

    sys.path.insert(0, str(REPO))
    properties = load_properties()
    names = args.only or list(properties)
    unknown = [n for n in names if n not in properties]
    if unknown:
        parser.error(f"unknown properties {unknown}; choose from {list(properties)}")
    per_property = -(-args.examples // len(names))
    total, failures = 0, {}
    for name in names:
        body, strategy = properties[name]
        start = time.perf_counter()
        count, failure = run_property(name, body, strategy, per_property, args.seed, args.timeout)
        total += count
        status = "FAILED" if failure else "ok"
        print(f"{name:<40} {count:>7} examples {time.perf_counter() - start:>7.1f} s  {status}", flush=True)
        if failure:
            failures[name] = failure
    for name, failure in failures.items():
        print(f"\n== {name} ==\n{failure}")
    print(f"\n{total} examples in total over {len(names)} properties; {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
