"""Fuzz the api with schemathesis (in process, fresh SQLite database) and print the figures.

    .venv/bin/python bench/fuzz_report.py [--max-examples 25] [--scenarios 25] [--seed 0] [--database-url URL]

Keys required (a key of a seeded tenant on every call). Prints operations, cases, 5xx count and
every finding of the per-operation fuzz, then of the stateful one (linked sequences of calls);
exits 1 if there is any. The same drivers run in CI as tests/security/test_fuzz.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25, help="cases per operation and mode")
    parser.add_argument("--scenarios", type=int, default=25, help="stateful sequences (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database-url", help="an empty database to fuzz on (e.g. PostgreSQL); default: SQLite")
    args = parser.parse_args()

    from tests.security.fuzzing import fuzz, fuzz_stateful
    from tests.security.harness import FUZZ_ENV, isolated_app, seed_for_fuzz

    with tempfile.TemporaryDirectory(prefix="regdiff-fuzz-") as home, \
            isolated_app(Path(home), database_url=args.database_url, **FUZZ_ENV) as app:
        headers, owned = seed_for_fuzz(app)
        reports = {"per operation": fuzz(app, headers=headers, owned=owned, max_examples=args.max_examples,
                                         seed=args.seed)}
        if args.scenarios:
            reports["stateful"] = fuzz_stateful(app, headers=headers, scenarios=args.scenarios)
    for name, report in reports.items():
        print(f"-- {name}")
        for operation, cases in report.per_operation.items():
            print(f"  {cases:5d}  {operation}")
        for finding in report.findings:
            print(f"FINDING {finding.operation} -> {finding.status}: {finding.problem}  [{finding.request}]")
        print(f"{name}: {report.summary()}")
    return 1 if any(report.findings for report in reports.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
