"""`regdiff`: the command line over `Client`.

Exit codes: 0 ok; 1 the API answered with an error or could not be reached (the problem's
detail on stderr); 2 usage; 3 a run or sample job ended failed/cancelled or timed out.
`--json` prints the server's objects for scripts; otherwise a short table.
"""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ._client import Client
from ._errors import APIError, JobFailedError, WaitTimeoutError
from .resources.runs import build_spec
from .types import Event, Run

EXIT_API, EXIT_JOB = 1, 3


class _Group(TyperGroup):
    """Turns the SDK's exceptions into a stderr line and an exit code, once for every command."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except APIError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_API) from exc
        except (JobFailedError, WaitTimeoutError) as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(EXIT_JOB) from exc


app = typer.Typer(cls=_Group, no_args_is_help=True, help=__doc__, pretty_exceptions_show_locals=False)
runs_app = typer.Typer(no_args_is_help=True, help="Submit, list and follow training runs.")
datasets_app = typer.Typer(no_args_is_help=True, help="Upload and list datasets.")
sweeps_app = typer.Typer(no_args_is_help=True, help="Sweeps: one run per value of the varied fields.")
app.add_typer(runs_app, name="runs")
app.add_typer(datasets_app, name="datasets")
app.add_typer(sweeps_app, name="sweeps")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@app.callback()
def _main(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="REGDIFF_URL", help="API base URL.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="REGDIFF_API_KEY", help="API key.")] = None,
) -> None:
    ctx.obj = Client(url, api_key)
    ctx.call_on_close(ctx.obj.close)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _render(report: dict[str, Any]) -> None:
    """A report of unknown shape, readably: lists of objects as tables, the rest as `key: value`."""
    for key, value in report.items():
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            typer.echo(f"{key}:")
            headers = list(dict.fromkeys(h for row in value for h in row))
            _table(headers, [[_cell(row.get(h)) for h in headers] for row in value])
        else:
            typer.echo(f"{key}: {_cell(value)}")


def _loss(run: Run) -> str:
    loss = run.metrics.get("loss")
    return f"{loss:.4g}" if isinstance(loss, (int, float)) else ""


def _steps(run: Run) -> str:
    return f"{run.step}/{run.total_steps}" if run.total_steps else str(run.step)


def _run_rows(runs: list[Run]) -> None:
    _table(
        ["ID", "STATUS", "STEP", "LOSS", "DATASET", "LAMBDA", "CREATED"],
        [
            [r.id, r.status, _steps(r), _loss(r), r.spec.get("dataset"), r.spec.get("lambda"), r.created_at]
            for r in runs
        ],
    )


def _show_run(run: Run, as_json: bool) -> None:
    """The run as `FIELD VALUE` rows, then its evaluation as a table of estimates; --json: as sent."""
    if as_json:
        _print_json(run.raw)
        return
    rows = [["id", run.id], ["status", run.status], ["step", _steps(run)], ["dataset", run.spec.get("dataset")],
            ["penalty", _penalty(run.spec)]]
    rows += [[name, _cell(value)] for name, value in run.metrics.items()]
    rows += [["error", run.error]] if run.error else []
    _table(["FIELD", "VALUE"], rows)
    _show_evaluation(run.evaluation)


def _penalty(spec: dict[str, Any]) -> str:
    """`0.1 * tv`, `0.1 * (tv + 0.5*l1)`: lambda times the regularizer's terms, as the spec says."""
    terms = spec.get("regularizer") or []
    names = [_term(t) for t in terms] if isinstance(terms, list) else [_term(terms)]
    summed = names[0] if len(names) == 1 else f"({' + '.join(names)})"
    return f"{_cell(spec.get('lambda'))} * {summed}" if names else ""


def _term(term: Any) -> str:
    if not isinstance(term, dict):
        return str(term)
    weight = term.get("weight", 1)
    return term.get("name", "?") if weight == 1 else f"{_cell(weight)}*{term.get('name', '?')}"


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if isinstance(ci, list) and len(ci) == 2 else ""


def _show_evaluation(evaluation: dict[str, Any] | None) -> None:
    """End-of-run scores with their 95% intervals and sample counts; FCD with its noise floor (the
    FCD of real images at the same N: what a perfect generator would score)."""
    if not evaluation:
        return
    typer.echo("")
    if evaluation.get("error"):
        typer.echo(f"evaluation failed: {evaluation['error']}")
        return
    n, n_real = evaluation.get("n_samples"), evaluation.get("n_real")
    floor = evaluation.get("fcd_noise_floor") or {}
    penalty = evaluation.get("penalty") or {}
    rows = [
        ("fcd", evaluation.get("fcd"), evaluation.get("fcd_ci"), n),
        ("fcd noise floor", floor.get("value"), floor.get("ci"), floor.get("n")),
        ("confidence", evaluation.get("confidence"), evaluation.get("confidence_ci"), n),
        ("classifier score", evaluation.get("classifier_score"), evaluation.get("classifier_score_ci"), n),
        ("penalty on samples", penalty.get("samples"), penalty.get("samples_ci"), n),
        ("penalty on real data", penalty.get("real"), penalty.get("real_ci"), n_real),
    ]
    _table(["METRIC", "VALUE", "95% CI", "N"],
           [[name, _cell(value), _ci(ci), count] for name, value, ci, count in rows if value is not None])


def _read_spec(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise typer.BadParameter(f"{path} is not JSON: {exc}", param_hint="--spec") from None


def _exit_for(run: Run) -> None:
    """Nonzero when a followed run did not succeed (the failure is already on stderr)."""
    if run.status != "succeeded":
        typer.echo(f"Error: {run.id} {run.status}" + (f": {run.error}" if run.error else ""), err=True)
        raise typer.Exit(EXIT_JOB)


@runs_app.command("create")
def runs_create(
    ctx: typer.Context,
    spec: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="A RunSpec JSON file.")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Built-in name or uploaded dataset id.")] = None,
    regularizer: Annotated[list[str] | None, typer.Option(help="Penalty name; repeat for a sum.")] = None,
    lambda_: Annotated[
        float | None, typer.Option("--lambda", help="Penalty weight (0: plain diffusion).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    preset: Annotated[str | None, typer.Option(help="Network preset, e.g. unet-xs.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow with a progress bar; exit 3 unless it succeeds.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Submit a run: a --spec file, flags, or both (flags win)."""
    fields: dict[str, Any] = {
        "dataset": dataset,
        "regularizer": [{"name": name} for name in regularizer] if regularizer else None,
        "lambda_": lambda_,
        "train": {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None} or None,
        "model": {"preset": preset} if preset else None,
    }
    run = ctx.obj.runs.create(
        spec=build_spec(_read_spec(spec), {k: v for k, v in fields.items() if v is not None})
    )
    if not as_json:
        typer.echo(f"Created {run.id} ({run.status})")
    if wait:
        run = ctx.obj.runs.wait(run.id, raise_on_failure=False)
        _show_run(run, as_json)
        _exit_for(run)
    elif as_json:
        _print_json(run.raw)


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed, ...")] = None,
    sweep: Annotated[str | None, typer.Option(help="Only the runs of this sweep.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The newest runs."""
    runs = []
    for run in ctx.obj.runs.list(status=status, sweep_id=sweep, limit=min(limit, 100)):
        runs.append(run)
        if len(runs) >= limit:
            break
    if as_json:
        _print_json([r.raw for r in runs])
    else:
        _run_rows(runs)


@runs_app.command("get")
def runs_get(ctx: typer.Context, run_id: str, as_json: JsonFlag = False) -> None:
    """One run's status, step and latest metrics."""
    _show_run(ctx.obj.runs.get(run_id), as_json)


@runs_app.command("logs")
def runs_logs(
    ctx: typer.Context,
    run_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming new events until the run ends.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event, per line.")] = False,
) -> None:
    """The run's events, one line each: those so far, or with --follow as they happen (SSE)."""
    for event in ctx.obj.runs.events(run_id, follow=follow):
        typer.echo(json.dumps(event.raw, default=str) if as_json else _event_line(event))


def _event_line(event: Event) -> str:
    """`2026-12-01 10:00:02  metrics     step 10: loss 0.31, penalty 0.02`; warnings and errors say so."""
    when = (event.created_at or "")[:19].replace("T", " ")
    level = "" if event.level in (None, "info") else f"{event.level.upper()}: "
    data = event.data if isinstance(event.data, dict) else {}
    if event.message:
        text = event.message
    else:
        fields = ", ".join(f"{key} {_cell(value)}" for key, value in data.items() if key != "step")
        text = f"step {data['step']}: {fields}" if "step" in data else fields
    return f"{when}  {event.type:<10}  {level}{text}".rstrip()


@runs_app.command("watch")
def runs_watch(
    ctx: typer.Context,
    run_id: str,
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up (exit 3) after this many seconds.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow a run with a progress bar until it ends; exit 3 unless it succeeded."""
    run = ctx.obj.runs.wait(run_id, timeout=timeout, raise_on_failure=False)
    _show_run(run, as_json)
    _exit_for(run)


@runs_app.command("cancel")
def runs_cancel(ctx: typer.Context, run_id: str, as_json: JsonFlag = False) -> None:
    """Ask a run to stop (it goes through `cancelling`)."""
    _show_run(ctx.obj.runs.cancel(run_id), as_json)


@runs_app.command("delete")
def runs_delete(ctx: typer.Context, run_id: str, as_json: JsonFlag = False) -> None:
    """Delete a run and what it stored."""
    ctx.obj.runs.delete(run_id)
    if as_json:
        _print_json({"id": run_id, "deleted": True})
    else:
        typer.echo(f"Deleted {run_id}")


@runs_app.command("compare")
def runs_compare(
    ctx: typer.Context,
    run_id: str,
    baseline: Annotated[str, typer.Option(help="The run to compare against, e.g. its lambda=0 twin.")],
    as_json: JsonFlag = False,
) -> None:
    """Does the extra loss make sense? The run against a baseline: the verdict sentence."""
    result = ctx.obj.runs.compare(run_id, baseline=baseline)
    if as_json:
        _print_json(result)
        return
    typer.echo(result["verdict"]["sentence"])
    used = result.get("seed_variance") or {}
    method = used.get("method", "?")
    if used.get("runs"):
        method += f" on {len(used['runs'])} lambda=0 runs"
    seeds = result.get("seeds") or {}
    typer.echo(f"(seeds: {seeds.get('run', 1)} vs {seeds.get('baseline', 1)}; seed variance: {method})")


@app.command("ui")
def ui(
    ctx: typer.Context,
    open_browser: Annotated[bool, typer.Option("--open", help="Also open it in the default browser.")] = False,
) -> None:
    """The dashboard's address (<url>/ui); --open also opens it in the default browser.

    Where keys are required the page asks for one once and keeps it for the browser session: the
    key is never part of the URL."""
    url = f"{ctx.obj.base_url}/ui"
    typer.echo(url)
    if open_browser:
        webbrowser.open(url)


@app.command("samples")
def samples(
    ctx: typer.Context,
    run_id: str,
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="Where to write the grid PNG.")
    ] = Path("grid.png"),
    n: Annotated[int | None, typer.Option("--n", min=1, help="How many images.")] = None,
    sampler: Annotated[str | None, typer.Option(help="ddpm, ddim or dpm_solver.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Sampler steps.")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM eta.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="A checkpoint id (default: the final weights).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Draw new samples from a finished run and save them as one grid PNG."""
    client = ctx.obj
    job = client.samples.create(
        run_id, n=n, sampler=sampler, steps=steps, eta=eta, seed=seed, checkpoint=checkpoint
    )
    job = client.samples.wait(job.id)
    client.samples.save_grid(job.id, output)
    if as_json:
        _print_json({**job.raw, "path": str(output)})
    else:
        typer.echo(f"Saved {output} ({job.id})")


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The dataset file.")],
    name: Annotated[str | None, typer.Option(help="A name to list it by.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a dataset file; use its id as a run's --dataset."""
    dataset = ctx.obj.datasets.upload(path, name=name)
    if as_json:
        _print_json(dataset.raw)
    else:
        typer.echo(f"Uploaded {dataset.id}")


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Uploaded datasets."""
    datasets = list(ctx.obj.datasets.list())
    if as_json:
        _print_json([d.raw for d in datasets])
    else:
        _table(["ID", "NAME", "CREATED"], [[d.id, d.name, d.created_at] for d in datasets])


def _parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """`lambda=0,0.1,1` -> {"lambda": [0, 0.1, 1]}; each value is JSON if it parses, else a string."""
    vary: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise typer.BadParameter(f"expected FIELD=V1,V2,... not {item!r}", param_hint="--vary")
        vary[key] = [_json_or_str(v) for v in values.split(",")]
    return vary


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@sweeps_app.command("create")
def sweeps_create(
    ctx: typer.Context,
    vary: Annotated[list[str], typer.Option(help="FIELD=V1,V2,...; repeat to vary several fields.")],
    spec: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="Base RunSpec JSON.")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Training seeds, e.g. 0,1: every point once per seed.")
    ] = None,
    max_fcd_increase: Annotated[
        float | None, typer.Option(help="The best setting may raise FCD by this much.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Start one run per combination of the --vary values (and per seed)."""
    sweep = ctx.obj.sweeps.create(
        base=_read_spec(spec) or {}, vary=_parse_vary(vary), seeds=_parse_seeds(seeds),
        max_fcd_increase=max_fcd_increase,
    )
    if as_json:
        _print_json(sweep.raw)
    else:
        typer.echo(f"Created {sweep.id} ({len(sweep.run_ids or sweep.runs)} runs)")


def _parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected integers like 0,1,2, not {text!r}", param_hint="--seeds") from None


def _estimate(value: Any, scale: float = 1, unit: str = "") -> str:
    if not isinstance(value, dict) or value.get("value") is None:
        return ""
    lo, hi = (scale * v for v in value["ci"])
    return f"{scale * value['value']:.4g}{unit} [{lo:.4g}, {hi:.4g}]"


def _render_points(report: dict[str, Any]) -> None:
    """The report's points with their verdicts, then the recommendation."""
    rows = []
    for p in report["points"]:
        v = p.get("verdict") or {}
        said = "baseline" if p.get("baseline") else (f"{v['penalty']}, quality {v['quality']}" if v else "")
        rows.append([p["label"], f"{p.get('evaluated')}/{len(p.get('run_ids') or [])}", _estimate(p.get("penalty")),
                     _estimate(p.get("relative_change"), 100, "%"), _estimate(p.get("fcd")),
                     _estimate(p.get("fcd_difference")), said])
    _table(["POINT", "SEEDS", "PENALTY", "CHANGE", "FCD", "FCD CHANGE", "VERDICT"], rows)
    real = (report.get("reference") or {}).get("penalty_real")
    if real is not None:
        typer.echo(f"penalty on real data: {real:.4g}")
    typer.echo(f"best: {report.get('best') or 'none'}")
    typer.echo(report.get("statement", ""))


@sweeps_app.command("report")
def sweeps_report(
    ctx: typer.Context,
    sweep_id: str,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", dir_okay=False, help="Also save the PNG.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Each point with its verdict against the lambda=0 baseline, and the best setting; -o also saves
    the report figure."""
    client = ctx.obj
    report = client.sweeps.report(sweep_id)
    if output:
        output.write_bytes(client.sweeps.report_png(sweep_id))
    if as_json:
        _print_json(report)
        return
    if "points" in report:
        _render_points(report)
    else:  # an older server: its fields as they come
        _render(report)
    if output:
        typer.echo(f"Saved {output}")
