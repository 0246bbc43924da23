"""Schemathesis against the app's own OpenAPI document, in process (ASGI), on a real database.

Every operation gets `max_examples` schema-valid cases and as many schema-invalid ones; the
operations with ids in their path get a third batch with ids the caller owns (so the handlers
behind the ownership check are fuzzed too). A finding is a 5xx (or a crash), or a 4xx that is
not RFC 9457 problem+json. Used by tests/security/test_fuzz.py and bench/fuzz_report.py.

`fuzz_stateful` walks sequences of calls instead: the OpenAPI document declares no links, but
schemathesis infers them from the schema (an id in a response feeds the operations that take
it), so a created run is fetched, cancelled, sampled and deleted within one scenario. A
generated run spec is almost never valid (a random preset or dataset name is a 422), so the
creating calls send `creations[label]` as their body: their bodies are `fuzz`'s job, what is
walked here is everything that follows a created object.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import hypothesis
import hypothesis.errors
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode

PROBLEM = "application/problem+json"
# Raised while the *client* builds a request (e.g. a generated header that is not latin-1):
# the request never reached the app, so it is not a finding.
CLIENT_SIDE = (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeEncodeError)


@dataclass
class Finding:
    operation: str
    status: int | None
    problem: str
    request: str


@dataclass
class FuzzReport:
    operations: int = 0
    cases: int = 0
    server_errors: int = 0
    bad_4xx: int = 0
    not_sent: int = 0
    followed: int = 0  # stateful: 2xx answers of operations on an id taken from an earlier response
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    per_operation: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (f"fuzz: {self.operations} operations, {self.cases} cases in {self.seconds:.1f} s;"
                f" 5xx: {self.server_errors}; 4xx without problem+json: {self.bad_4xx};"
                f" not sent (client-side encoding): {self.not_sent}; statuses {{{codes}}}")


def _check(report: FuzzReport, label: str, case, response: schemathesis.Response) -> None:
    status = response.status_code
    report.statuses[status] += 1
    where = f"{case.method} {case.formatted_path}"
    body = response.content[:300].decode(errors="replace")
    if status >= 500:
        report.server_errors += 1
        report.findings.append(Finding(label, status, body, where))
    elif status >= 400:
        ctype = (response.headers.get("content-type") or [""])[0]
        try:
            ok = ctype == PROBLEM and json.loads(response.content)["status"] == status
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            report.bad_4xx += 1
            report.findings.append(Finding(label, status, f"{ctype}: {body}", where))


def fuzz(app: FastAPI, *, headers: dict[str, str], owned: dict[str, str], max_examples: int = 25,
         seed: int = 0) -> FuzzReport:
    """Run the fuzz; `owned` maps path parameter names (run_id, ...) to ids the caller owns."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    started = time.perf_counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    # DELETE last, so the owned run lives while the other operations are fuzzed with it
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    report.operations = len(operations)
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"
        names = [p.name for p in operation.path_parameters]
        batches = [(GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        if names and all(n in owned for n in names):
            batches.append((GenerationMode.POSITIVE, {n: owned[n] for n in names}))
        before = report.cases
        for mode, path_parameters in batches:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            try:
                _run_batch(report, label, strategy, headers, max_examples, seed)
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing to make invalid (no parameters, no body): the positive batch covers it
        report.per_operation[label] = report.cases - before
    report.seconds = time.perf_counter() - started
    return report


def fuzz_stateful(app: FastAPI, *, headers: dict[str, str], creations: dict[str, dict], scenarios: int = 10,
                  steps: int = 6) -> FuzzReport:
    """`scenarios` sequences of up to `steps` linked calls, every response checked like `fuzz`'s;
    `creations` maps "POST /path" to the valid JSON body those calls send."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    report = FuzzReport()
    started = time.perf_counter()

    class Machine(schema.as_state_machine()):
        def before_call(self, case) -> None:
            case.headers = {**(case.headers or {}), **headers}  # the key, not a generated Authorization value
            if case.operation.label in creations:
                case.body = creations[case.operation.label]

        def get_call_kwargs(self, case) -> dict:
            return {"timeout": 30}

        def call(self, case, **kwargs) -> schemathesis.Response:
            label = case.operation.label
            report.cases += 1
            report.per_operation[label] = report.per_operation.get(label, 0) + 1
            try:
                return case.call(**kwargs)
            except CLIENT_SIDE:
                report.not_sent += 1
            except Exception as exc:  # the app raised past every handler: a crash
                report.server_errors += 1
                report.findings.append(Finding(label, None, f"{type(exc).__name__}: {exc}"[:300],
                                               f"{case.method} {case.formatted_path}"))
            hypothesis.reject()  # no response to go on from: end this scenario's branch

        def validate_response(self, response, case, **kwargs) -> None:
            _check(report, case.operation.label, case, response)  # recorded, never raised
            if case.operation.path_parameters and 200 <= response.status_code < 300:
                report.followed += 1

    try:
        Machine.run(settings=hypothesis.settings(
            max_examples=scenarios, stateful_step_count=steps, deadline=None, database=None, derandomize=True,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    except hypothesis.errors.FlakyStrategyDefinition:
        # The database is not reset between scenarios, so a replayed prefix can meet other objects
        # (a longer list, a deleted run) and draw differently; the walk ends there, every call so far checked.
        pass
    report.operations = len(report.per_operation)
    report.seconds = time.perf_counter() - started
    return report


def _run_batch(report: FuzzReport, label: str, strategy, headers: dict[str, str], max_examples: int,
               seed: int) -> None:
    """`max_examples` cases from `strategy`, each sent once; findings are recorded, never raised."""

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.seed(seed)
    @given(case=strategy)
    def run(case) -> None:
        report.cases += 1
        try:
            response = case.call(headers=headers, timeout=30)
        except CLIENT_SIDE:
            report.not_sent += 1
            return
        except Exception as exc:  # the app raised past every handler: a crash
            report.server_errors += 1
            report.findings.append(Finding(label, None, f"{type(exc).__name__}: {exc}"[:300],
                                           f"{case.method} {case.formatted_path}"))
            return
        _check(report, label, case, response)

    run()
