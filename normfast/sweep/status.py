"""What the sweep says about its runs: the state of each (done, running, failed, pending), the
summary table at the end, `--status` and `--dry-run` with their estimates."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from normfast.errors import NormfastError
from normfast.rundir import RunDir
from normfast.sweep.claims import ClaimStore
from normfast.sweep.estimate import Estimator
from normfast.sweep.planning import Plan, Prepared, SweepRequest
from normfast.sweep.worker import finished, ordered_jobs


@dataclass
class State:
    kind: str            # done | running | failed | pending | error
    detail: str = ""
    time: float = 0.0    # failed: when the failure was recorded


def state_of(p: Prepared, store: ClaimStore) -> State:
    if p.error is not None:
        return State("error", p.error)
    if finished(p):
        return State("done")
    claim = store.read(p.key)
    if claim is not None and not claim.stale(store.timeout):
        epochs = len(RunDir(p.run_dir).read_metrics(strict=False)) if p.run_dir.exists() else 0
        return State("running", f"{claim.describe()}, epoch {epochs}/{p.cfg.epochs}")
    failure = store.failure(p.key)
    if failure:
        return State("failed", str(failure.get("error", "?")), float(failure.get("time", 0)))
    return State("pending", "to resume" if RunDir(p.run_dir).has_checkpoint() else "to run")


def store_for(plan: Plan, request: SweepRequest) -> ClaimStore:
    return ClaimStore(plan.runs_root, request.claim_timeout, request.heartbeat)


def row_of(p: Prepared, status: str) -> dict:
    r = p.spec
    row = {"dataset": r.dataset, "model": r.model, "norm": r.norm, "backend": r.backend, "seed": r.seed,
           "status": status}
    if p.run_dir is not None:
        try:
            row |= summarize(p.run_dir)
        except NormfastError as e:
            row["status"] = f"failed: {e}"
    return row


def summary_rows(plan: Plan, request: SweepRequest, done_before: set) -> list[dict]:
    """The end-of-sweep rows: done before | ran | failed: ERROR | running elsewhere | not run."""
    store = store_for(plan, request)
    rows = []
    for p in plan.runs:
        s = state_of(p, store)
        if s.kind == "error":
            status = f"failed: {s.detail}"
        elif s.kind == "done":
            status = "done before" if p.key in done_before else "ran"
        elif s.kind == "running":
            status = f"running ({s.detail})"
        elif s.kind == "failed":
            since = s.time >= request.started
            status = f"failed: {s.detail}" if since else f"not run (failed before: {s.detail})"
        else:
            status = "not run"
        rows.append(row_of(p, status))
    return rows


def gpu_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}"


def print_status(plan: Plan, request: SweepRequest, echo) -> None:
    """`--status`: every configuration's state, then the estimated GPU-hours left."""
    store, est = store_for(plan, request), Estimator(plan.runs_root, request.bench)
    left, sources = 0.0, {}
    n = len(plan.runs)
    for p in plan.runs:
        s = state_of(p, store)
        head = f"[{p.index}/{n}] {p.label}"
        if s.kind == "error":
            echo(f"{head}: failed ({s.detail})")
            continue
        if s.kind == "done":
            best = RunDir(p.run_dir).read_best()
            echo(f"{head}: done (best acc {best.get('best_acc', float('nan')):.4f})")
            continue
        seconds, source = est.seconds_left(p)
        left += seconds
        sources[source] = sources.get(source, 0) + 1
        echo(f"{head}: {s.kind} ({s.detail}; {gpu_hours(seconds)} GPU-h left, img/s {source})")
    src = ", ".join(f"{v} {k}" for k, v in sorted(sources.items())) or "none left"
    echo(f"estimated GPU-hours left: {gpu_hours(left)} (img/s of the runs left: {src}; "
         f"fallback = normfast.sweep.estimate.FALLBACK_IPS)")


def print_plan(plan: Plan, request: SweepRequest, echo) -> None:
    """`--dry-run`: each run's state, then the jobs to train, longest first, with estimates."""
    store, est = store_for(plan, request), Estimator(plan.runs_root, request.bench)
    n = len(plan.runs)
    for p in plan.runs:
        s = state_of(p, store)
        status = {"error": f"failed: {s.detail}", "done": "done before", "running": f"running ({s.detail})",
                  "failed": f"to run again (failed before: {s.detail})",
                  "pending": s.detail}[s.kind]
        if s.kind in ("pending", "failed"):
            seconds, source = est.seconds_left(p)
            status += f" ({gpu_hours(seconds)} GPU-h, img/s {source})"
        echo(f"[{p.index}/{n}] {p.label}: {status}")
    total, k = 0.0, 0
    for job in ordered_jobs(plan, request):
        todo = [p for p in job.runs if state_of(p, store).kind in ("pending", "failed")]
        if not todo:
            continue
        k += 1
        seconds = sum(est.seconds_left(p)[0] for p in todo)
        total += seconds
        sources = sorted({est.seconds_left(p)[1] for p in todo})
        fused = " (fused)" if len(todo) > 1 else ""
        echo(f"job {k}{fused}: {' + '.join(p.label for p in todo)}: {gpu_hours(seconds)} GPU-h "
             f"(img/s {', '.join(sources)})")
    echo(f"plan: {k} jobs, estimated {gpu_hours(total)} GPU-hours in all (longest first)")


def summarize(run_dir: Path) -> dict:
    from normfast.report.runs import read_run
    out = {"run_dir": str(run_dir)}
    if not RunDir(run_dir).config_path.exists():
        return out
    # the summary line tolerates a damaged metrics line (rows before it count); `normfast report` does not
    run = read_run(run_dir, strict=False)
    if run.best_acc is not None:
        out |= {"best_acc": run.best_acc, "best_epoch": run.best_epoch}
    ips = run.mean_of("train_images_per_second")
    if ips is not None:
        out["train_images_per_second"] = ips
    return out


def format_summary(results: list[dict]) -> str:
    lines = ["| dataset | model | norm | backend | seed | status | best acc | best epoch | train img/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        acc = f"{r['best_acc']:.4f}" if "best_acc" in r else "—"
        ips = f"{r['train_images_per_second']:.0f}" if "train_images_per_second" in r else "—"
        epoch = "—" if r.get("best_epoch") is None else r["best_epoch"] + 1   # stored from 0, shown from 1
        lines.append(f"| {r['dataset']} | {r['model']} | {r['norm']} | {r['backend']} | {r['seed']} | "
                     f"{r['status']} | {acc} | {epoch} | {ips} |")
    return "\n".join(lines)
