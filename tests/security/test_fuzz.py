"""Schemathesis over the whole OpenAPI document: no 5xx, and every 4xx is problem+json.

In process (ASGI) with keys required, on both databases the service runs on: SQLite and
PostgreSQL (which refuses values SQLite takes, e.g. a NUL in a text parameter). POST /v1/runs
queues runs on the embedded broker and no worker runs, so nothing trains.
`bench/fuzz_report.py` runs the same fuzz with more cases and prints every finding.
"""

from __future__ import annotations

import pytest

from tests.live import fresh_postgres_database
from tests.security.fuzzing import fuzz, fuzz_stateful
from tests.security.harness import FUZZ_ENV, isolated_app, seed_for_fuzz
from tests.security.seed import TINY

# per operation and mode (valid, invalid, with owned ids): about 750 cases per database
MAX_EXAMPLES = 10
SCENARIOS = 10  # stateful: sequences of up to 6 linked calls each


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    if request.param == "sqlite":
        yield None
        return
    url, drop = fresh_postgres_database()
    yield url
    drop()


def test_fuzzing_finds_no_server_error_and_no_bare_4xx(tmp_path, database_url):
    with isolated_app(tmp_path / "home", database_url=database_url, **FUZZ_ENV) as app:
        headers, owned = seed_for_fuzz(app)
        report = fuzz(app, headers=headers, owned=owned, max_examples=MAX_EXAMPLES)
    print("\n" + report.summary())
    assert report.operations >= 20 and report.cases >= 20 * MAX_EXAMPLES
    details = "\n".join(f"{f.operation} -> {f.status}: {f.problem} [{f.request}]" for f in report.findings[:20])
    assert report.server_errors == 0, details
    assert report.bad_4xx == 0, details
    assert report.statuses[200] > 0 and report.statuses[422] > 0  # the fuzz reached handlers and validation


def test_stateful_fuzzing_with_a_key_finds_no_server_error(tmp_path, database_url):
    """Linked sequences (create a run, then fetch, cancel, sample, delete it) with keys required."""
    with isolated_app(tmp_path / "home", database_url=database_url, **FUZZ_ENV) as app:
        headers, _ = seed_for_fuzz(app)
        report = fuzz_stateful(app, headers=headers, scenarios=SCENARIOS,
                               creations={"POST /v1/runs": TINY, "POST /v1/sweeps": {"base": TINY, "vary": {"lambda": [0, 1]}}})
    print("\nstateful " + report.summary())
    details = "\n".join(f"{f.operation} -> {f.status}: {f.problem} [{f.request}]" for f in report.findings[:20])
    assert report.server_errors == 0 and report.bad_4xx == 0, details
    assert report.cases >= SCENARIOS and report.statuses[401] == 0  # every call carried the key
    assert report.statuses[201] > 0 and report.followed > 0, report.per_operation  # created, then followed
