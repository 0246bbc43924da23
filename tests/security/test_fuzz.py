"""Schemathesis over the whole OpenAPI document: no 5xx, and every 4xx is problem+json.

In process (ASGI) against a real SQLite database with keys required; POST /v1/runs queues
runs on the embedded broker and no worker runs, so nothing trains. `bench/fuzz_report.py`
runs the same fuzz with more cases and prints every finding.
"""

from __future__ import annotations

from tests.security.fuzzing import fuzz
from tests.security.harness import FUZZ_ENV, isolated_app, seed_for_fuzz

MAX_EXAMPLES = 15  # per operation and mode: about 1,100 cases, well under a minute on 2 cores


def test_fuzzing_finds_no_server_error_and_no_bare_4xx(tmp_path):
    with isolated_app(tmp_path / "home", **FUZZ_ENV) as app:
        headers, owned = seed_for_fuzz(app)
        report = fuzz(app, headers=headers, owned=owned, max_examples=MAX_EXAMPLES)
    print("\n" + report.summary())
    assert report.operations >= 20 and report.cases >= 20 * MAX_EXAMPLES
    details = "\n".join(f"{f.operation} -> {f.status}: {f.problem} [{f.request}]" for f in report.findings[:20])
    assert report.server_errors == 0, details
    assert report.bad_4xx == 0, details
    assert report.statuses[200] > 0 and report.statuses[422] > 0  # the fuzz reached handlers and validation
