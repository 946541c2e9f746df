"""Plan the runs, execute the missing ones (on an executor), store each as it finishes.

Every run is single-threaded (results do not depend on ``--jobs``; J jobs use J cores).
Ctrl-C and SIGTERM stop the lab cleanly: finished runs are kept, runs in flight are redone
on resume, and :class:`LabError` carries exit code 130 or 143. Why, and what happens to the
workers and Ray tasks: docs/design/lab-runs.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import os
import platform
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sharenorm.lab.experiments import get_experiment, resolve
from sharenorm.lab.spec import Experiment, RunContext
from sharenorm.lab.store import LAB_VERSION, LabError, ResultsStore, run_key

__all__ = ["Task", "plan", "jobs_of", "run_lab", "execute", "execute_job", "environment"]


@dataclass(frozen=True)
class Task:
    experiment: str
    config: dict
    seed: int

    @property
    def key(self) -> str:
        return run_key(self.experiment, self.config, self.seed)


def plan(experiments: list[Experiment], quick: bool, seeds: int) -> list[Task]:
    """All runs of ``experiments``: each config × seeds ``0..seeds-1`` (one seed if unseeded)."""
    tasks = []
    for e in experiments:
        for cfg in e.configs(quick):
            for s in range(seeds if e.seeded else 1):
                tasks.append(Task(e.id, cfg, s))
    return tasks


def jobs_of(tasks: list[Task]) -> list[list[Task]]:
    """The units of execution, in plan order: the tasks of one experiment and config (its
    seeds), or of the configs that differ only in the experiment's ``stack_over`` keys (a
    learning-rate grid with its seeds). :func:`execute_job` trains a job's runs together, so
    a job is always all its planned runs (also when resuming): a result does not depend on
    which of them were already done, nor on ``--jobs``."""
    by: dict[tuple, list[Task]] = {}
    over: dict[str, tuple[str, ...]] = {}
    for t in tasks:
        if t.experiment not in over:
            over[t.experiment] = get_experiment(t.experiment).stack_over
        shared = {k: v for k, v in t.config.items() if k not in over[t.experiment]}
        by.setdefault((t.experiment, json.dumps(shared, sort_keys=True)), []).append(t)
    return list(by.values())


def execute_job(experiment: str, runs: list[tuple[dict, int]], quick: bool,
                data_path: str | None) -> list[tuple[dict, dict]]:
    """Do ``runs`` (``(config, seed)`` pairs of one job) together, in this process or a
    worker: the experiment's ``run`` calls proceed as coroutines whose ``train_classifier``
    calls train as one stacked model (:func:`sharenorm.lab.jobs.run_together`); an experiment
    with ``batched=False``, or a single run, runs each alone. Returns ``(metrics, timing)``
    per run; ``timing`` holds the job's wall and CPU seconds divided by its runs."""
    import torch

    exp = get_experiment(experiment)
    if len(runs) == 1 or not exp.batched:
        return [execute(experiment, c, s, quick, data_path) for c, s in runs]
    from sharenorm.lab.jobs import run_together

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ctx = RunContext(quick=quick, data_path=data_path)
        t0, c0 = time.perf_counter(), time.process_time()
        out = run_together([lambda c=c, s=s: _counted(exp.run, c, s, ctx) for c, s in runs])
        k = len(runs)
        share = {"run_s": round((time.perf_counter() - t0) / k, 4),
                 "cpu_s": round((time.process_time() - c0) / k, 4), "job_runs": k}
        return [(metrics, dict(timing, **share)) for metrics, timing in out]
    finally:
        torch.set_num_threads(threads)


def execute(experiment: str, config: dict, seed: int, quick: bool,
            data_path: str | None) -> tuple[dict, dict]:
    """Do one run (in this process or a worker): single-threaded, seeded, returns
    ``(metrics, timing)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = get_experiment(experiment)
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        metrics, timing = _counted(exp.run, config, seed, RunContext(quick=quick,
                                                                      data_path=data_path))
        # wall time and this process's CPU time: on a CPU shared with other work the wall time
        # grows with the load, the CPU time (one thread) much less. Processes the run started
        # and waited for (N9's gloo ranks) are counted separately.
        timing = dict(timing, run_s=round(time.perf_counter() - t0, 4),
                      cpu_s=round(time.process_time() - c0, 4),
                      cpu_children_s=round(_children_cpu() - k0, 4))
        return metrics, timing
    finally:
        torch.set_num_threads(threads)


def _counted(run, config, seed, ctx) -> tuple[dict, dict]:
    """``run(config, seed, ctx)``, with the optimizer steps it took (its learning-rate
    selection tries included) as ``timing["steps_total"]``."""
    from sharenorm.lab.train import counting_steps

    with counting_steps() as steps:
        metrics, timing = run(config, seed, ctx)
    return metrics, dict(timing, steps_total=steps())


def _children_cpu() -> float:
    """CPU seconds of this process's finished, waited-for child processes."""
    try:
        import resource

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime
    except (ImportError, OSError):
        return 0.0


def environment() -> dict:
    """Versions, CPU/GPU and threads: printed in the report."""
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "numpy": numpy.__version__, "cpu": cpu,
        "cpu_count": os.cpu_count(),
        # the vector kernels in use: the numbers are bit-identical between machines only with
        # the same ones (the lab command pins AVX2: executors.pin_vector_isa)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0)
        if torch.cuda.is_available() else "none (CPU only)", "threads_per_run": 1,
    }
    from importlib import metadata

    for mod, dist in (("sklearn", "scikit-learn"), ("mnist1d", "mnist1d"),
                      ("matplotlib", "matplotlib"), ("scipy", "scipy")):
        try:
            env[mod] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            try:
                env[mod] = getattr(__import__(mod), "__version__", "installed")
            except ImportError:
                env[mod] = "missing"
    import sharenorm

    env["sharenorm"] = sharenorm.__version__
    env["git_commit"] = git_commit()
    return env


def git_commit() -> str | None:
    """The git commit of the sharenorm source that runs (``+dirty`` with uncommitted changes),
    or None when it is not a git checkout (an installed wheel) or git is missing."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        # This file must be tracked by the repository git finds: a copy installed inside some
        # other project's checkout (e.g. its .venv) would otherwise report that project's commit.
        tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch",
                                  Path(__file__).name], capture_output=True, timeout=5)
        if tracked.returncode != 0:
            return None
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "-uno", "--",
                                str(here.parent)], capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C."""


_TERM_PENDING = threading.Event()


def _raise_terminated(signum, frame):
    # Raised from a signal handler, the exception is lost ("Exception ignored in ...") when
    # the signal lands inside a weakref callback or a __del__: the flag makes the lab's own
    # checks between runs (_stop_if_terminated) raise it again.
    _TERM_PENDING.set()
    raise _Terminated()


def _stop_if_terminated() -> None:
    if _TERM_PENDING.is_set():
        raise _Terminated()


MAX_SEEDS = 10_000


def _count(what: str, value) -> int:
    """``value`` as an int: numpy's ints too, not a bool, a float or a str."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise LabError(f"{what} must be an int, got {value!r}")


def run_lab(names: list[str], *, quick: bool = False, seeds: int = 5, jobs: int = 1,
            data: str | None = None, out: str | os.PathLike = "lab-results", lang: str = "en",
            progress: bool = True, report: bool = True, echo=print,
            command: str | None = None, executor: str = "local",
            address: str | None = None) -> Path | None:
    """Run (or resume) the lab and write the report; returns the report's path.

    ``command`` (the command line, recorded in the session for the report) defaults to
    ``run_lab(...)`` with the arguments. ``executor`` is where the runs execute: "local"
    (``jobs`` processes here) or "ray" (Ray tasks on the cluster at ``address``; see
    :mod:`sharenorm.lab.executors`); either way this process alone writes the results.
    The ``sharenorm lab`` command's numbers come from AVX2 kernels on every x86-64 CPU; to get
    them here, call :func:`~sharenorm.lab.executors.pin_vector_isa` before this process's
    first torch operation (docs/design/lab-runs.md).

    Raises:
        LabError: bad arguments or an output folder holding another lab's results.
        DataError: ``data`` cannot be loaded, or its training split is smaller than the largest
            batch the chosen experiments train with.
    """
    # From Python the arguments are not argparse's: a str would be read name by name and
    # letter by letter, a bool or a float as a count
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise LabError(f"names must be a list of claim or experiment ids (e.g. ['N6']), got "
                       f"{names!r}")
    seeds, jobs = _count("--seeds", seeds), _count("--jobs", jobs)
    if not isinstance(quick, bool):
        raise LabError(f"quick must be True or False, got {quick!r}")
    if seeds < 1:
        raise LabError(f"--seeds must be ≥ 1 (got {seeds}); 3 gives 95% intervals over 3 seeds")
    if seeds > MAX_SEEDS:  # the plan alone would fill the memory before the first run
        raise LabError(f"--seeds must be ≤ {MAX_SEEDS} (got {seeds}): each seed is one more run "
                       "of every configuration; 5 (the default) gives the report's intervals")
    cores = os.cpu_count() or 1
    # each local job is a process that imports torch (~0.3 GB); Ray's tasks run on its nodes
    if jobs < 1 or (executor == "local" and jobs > 4 * cores):
        raise LabError(f"--jobs must be between 1 and 4 × the CPU cores ({4 * cores}; got "
                       f"{jobs}); use the number of cores, here {cores}")
    if not isinstance(out, (str, os.PathLike)):
        raise LabError(f"out must be a folder path, got {out!r}")
    if data is not None and not isinstance(data, (str, os.PathLike)):
        raise LabError(f"--data must be a path, got {data!r}")
    if lang not in ("en", "hi"):
        raise LabError(f"--lang must be 'en' or 'hi', got {lang!r}")
    from sharenorm.lab.executors import make_executor

    pool = make_executor(executor, jobs=jobs, address=address)  # nothing starts before `with`
    exps = resolve(names)
    if seeds == 1:
        from sharenorm.lab.experiments import interval_claims

        echo("warning: --seeds 1 gives no 95% confidence intervals; every criterion that "
             f"compares intervals ({', '.join(interval_claims())}) is reported 'inconclusive'. "
             "Use --seeds 2 or more for verdicts (5, the default, for conclusions).")
    data_id = "embedded"
    if data is not None:
        from sharenorm.data import DataError, load_path

        ds = load_path(data)  # fail now, with the file and the problem, not inside a worker
        # every run of a --data experiment must take at least one optimizer step on a full
        # batch: a smaller training split would fail (or train on nothing) in every worker
        short = [(e, k) for e in exps if e.uses_data
                 and (k := e.train_samples_needed(quick)) > len(ds.x_train)]
        if short:
            raise DataError(_too_few_samples(data, len(ds.x_train), short, quick))
        positions = math.prod(ds.x_train.shape[2:])
        small = [e for e in exps if e.uses_data and e.min_positions > positions]
        if small:
            claims = ", ".join(c for e in small for c in e.claims)
            raise DataError(
                f"{data}: {positions} position(s) per sample (shape "
                f"{tuple(ds.x_train.shape[1:])}), too few for {claims}: their InstanceNorm "
                f"takes statistics over each sample's positions and needs ≥ "
                f"{max(e.min_positions for e in small)}. Give longer signals or larger "
                f"images, or leave {claims} out.")
        data_id = (f"{Path(data).resolve()} ({ds.name}, {tuple(ds.x_train.shape)}, "
                   f"content {_fingerprint(ds)})")
        if not any(e.uses_data for e in exps):
            echo("note: none of the chosen experiments uses --data; they run on their defaults")
    header = {"lab_version": LAB_VERSION, "profile": "quick" if quick else "full",
              "data": data_id}
    if command is None:
        command = (f"run_lab({list(names)!r}, quick={quick}, seeds={seeds}, jobs={jobs}, "
                   f"data={data!r}, out={str(out)!r}, lang={lang!r}, executor={executor!r}, "
                   f"address={address!r})")
    store = ResultsStore.open(out, header)
    try:
        return _run_opened(store, names, exps, quick=quick, seeds=seeds, jobs=jobs, data=data,
                           out=out, lang=lang, progress=progress, report=report, echo=echo,
                           command=command, pool=pool, executor=executor, address=address)
    finally:
        store.close()


def _fingerprint(ds) -> str:
    """A short hash of a dataset's tensors: a ``--data`` file rewritten in place (same path and
    shape, other values) is other data, whose results must not resume into these."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy())
    return h.hexdigest()


def _too_few_samples(data, n: int, short: list, quick: bool) -> str:
    """The refusal of a ``--data`` training split too small for the experiments ``short``
    (``[(experiment, samples it needs)]``), with every way out: more samples, the full profile
    (where its runs need fewer: N6/N8 train for a whole epoch there), other experiments."""
    def flag(e, k):  # only where the profile matters
        return " with --quick" if quick and e.train_samples_needed(False) != k else ""

    lack = "; ".join(f"{'/'.join(e.claims)} ({e.id}) needs ≥ {k}{flag(e, k)}" for e, k in short)
    ways = [f"Give ≥ {max(k for _, k in short)} training samples"]
    if quick:
        full = max(e.train_samples_needed(False) for e, _ in short)
        if full <= n:
            ways.append(f"run without --quick (its runs need ≥ {full})")
    ways.append(f"leave {', '.join(c for e, _ in short for c in e.claims)} out")
    return (f"{data}: {n} training samples, too few: {lack} (the samples one run's batches "
            f"take). {', or '.join(ways)}.")


def _run_opened(store, names, exps, *, quick, seeds, jobs, data, out, lang, progress, report,
                echo, command, pool, executor, address) -> Path | None:
    if store.repaired:
        echo(f"note: {store.path} ended in a truncated line ({store.repaired} bytes, from an "
             "interrupted run); it was removed and that run is redone")
    runnable = []
    for e in exps:
        miss = e.missing()
        if miss:
            echo(f"skip {e.id} ({'/'.join(e.claims)}): sharenorm lacks {', '.join(miss)}")
        else:
            runnable.append(e)
    tasks = plan(runnable, quick, seeds)
    todo = [t for t in tasks if not store.done(t.key)]
    # a job with a missing run is redone whole (its seeds train together); only the missing
    # runs are stored
    work = [j for j in jobs_of(tasks) if any(not store.done(t.key) for t in j)]
    if len(todo) < len(tasks):
        echo(f"resuming {store.path}: {len(tasks) - len(todo)} of {len(tasks)} runs already done")
    remaining = Counter(t.experiment for t in todo)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t_start = time.perf_counter()
    started = _now()
    # provenance of the code that runs: read now, not at the end (files edited while the lab
    # runs change nothing the session imported, but would mark it "+dirty")
    env_at_start = environment()
    exp_t0: dict[str, float] = {}
    # when an experiment's first run really started (not when it was queued behind others'
    # runs): its finish time minus its own run time
    exp_start: dict[str, float] = {}
    bar = _progress(len(todo), progress, echo)
    figdir = Path(out) / "figures"

    def finished(task: Task, metrics: dict, timing: dict) -> None:
        store.add_run({"experiment": task.experiment, "config": task.config, "seed": task.seed,
                       "metrics": metrics, "time": timing})
        bar.update(1)
        now = time.perf_counter()
        began = now - float(timing.get("run_s") or 0.0)
        exp_start[task.experiment] = min(exp_start.get(task.experiment, began), began)
        remaining[task.experiment] -= 1
        if remaining[task.experiment] == 0:
            _summary(get_experiment(task.experiment), store, figdir, lang, quick,
                     now - exp_start[task.experiment], bar.write)

    def job_finished(job: list[Task], results: list) -> None:
        for t, (metrics, timing) in zip(job, results, strict=True):
            if not store.done(t.key):
                finished(t, metrics, timing)
        _stop_if_terminated()  # a SIGTERM whose exception was lost in a callback

    data_arg = str(data) if data is not None else None
    n_before = len(store.runs)
    keys_before = set(store.runs)

    def session(status: str) -> dict:
        # provenance: what ran, how, with which versions; one line per invocation, also for
        # an interrupted one, so results from different versions are visible in the report.
        # Throughput: the optimizer steps of this session's runs (learning-rate selection
        # tries included) over its wall time.
        wall = time.perf_counter() - t_start
        steps = sum(r["time"].get("steps_total", r["metrics"].get("steps_done")) or 0
                    for key, r in store.runs.items() if key not in keys_before)
        return {"started": started, "finished": _now(), "status": status,
                "wall_s": round(wall, 2), "jobs": jobs,
                "seeds": seeds, "names": list(names), "runs_done": len(store.runs) - n_before,
                "steps_done": steps, "steps_per_s": round(steps / max(wall, 1e-9), 1),
                "command": command,
                "flags": {"quick": quick, "seeds": seeds, "jobs": jobs, "data": data_arg,
                          "lang": lang, "names": list(names), "executor": executor,
                          "address": address},
                "load": [round(load0, 2), round(os.getloadavg()[0], 2)]
                if load0 is not None else None, "env": env_at_start}

    on_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_terminated) if on_main else None
    _TERM_PENDING.clear()
    try:
        if executor == "local" and (jobs == 1 or len(work) <= 1):
            for job in work:
                exp_t0.setdefault(job[0].experiment, time.perf_counter())
                job_finished(job, execute_job(job[0].experiment,
                                              [(t.config, t.seed) for t in job], quick,
                                              data_arg))
        elif work:
            _dispatch(work, pool, quick, data_arg, job_finished, exp_t0)
        _stop_if_terminated()
    except KeyboardInterrupt as e:
        bar.close()
        term = isinstance(e, _Terminated)
        if on_main:  # a second signal now would cut the session line short: ignore it
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            store.add_session(session("terminated (SIGTERM)" if term else "interrupted (Ctrl-C)"))
        except LabError:
            pass
        raise LabError(f"{'terminated (SIGTERM)' if term else 'interrupted'}: "
                       f"{len(store.runs)} finished runs are saved in {store.path}; "
                       "run the same command again to resume",
                       exit_code=143 if term else 130) from None
    except Exception as e:
        # A bug in a run (or a write error): the finished runs are already stored. Record the
        # session as failed, as an interrupt is recorded, so the report's provenance shows
        # it, then let the error through (exit code 1 with its traceback: it is a bug).
        bar.close()
        if on_main:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        try:
            store.add_session(session(f"failed ({why})"))
        except LabError:
            pass
        if not isinstance(e, LabError):  # a LabError says what is saved itself
            echo(f"lab failed: {len(store.runs)} finished runs are saved in {store.path}; "
                 "run the same command again to resume once the error is fixed")
        raise
    finally:
        bar.close()
        if on_main:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
    for e in runnable:  # experiments that had nothing left to run still get their line
        if e.id not in remaining:
            _summary(e, store, figdir, lang, quick, 0.0, echo)
    wall = time.perf_counter() - t_start
    store.add_session(session("complete"))
    where = f"jobs={jobs}" if executor == "local" else f"executor={executor}"
    echo(f"lab: {len(todo)} runs in {wall:.1f} s ({where}); results in {store.path}")
    if not report:
        return None
    from sharenorm.lab.report import write_report

    path = write_report(out, lang=lang)
    echo(f"report: {path} and {path.with_suffix('.html')}")
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _run_job(job: list[Task], quick: bool, data_path: str | None) -> list[tuple[dict, dict]]:
    """One work item of an executor: a job's runs (a top-level function, so it pickles by
    name)."""
    return execute_job(job[0].experiment, [(t.config, t.seed) for t in job], quick, data_path)


def _dispatch(work, executor, quick, data_arg, job_finished, exp_t0) -> None:
    """Run the jobs of ``work`` on ``executor`` (an unstarted :mod:`~sharenorm.lab.executors`
    executor), storing each job's runs as it finishes. A failed job stops everything (the
    finished runs are stored; the runs in flight are dropped and redone on resume) and its
    error goes up."""
    import functools

    from sharenorm.lab.executors import Failure

    def items():
        for job in work:  # an experiment's clock starts when its first job is handed out
            exp_t0.setdefault(job[0].experiment, time.perf_counter())
            yield job

    fn = functools.partial(_run_job, quick=quick, data_path=data_arg)
    with executor as ex:
        for job, out in ex.imap_unordered(fn, items()):
            if isinstance(out, Failure):
                raise out.exception
            job_finished(job, out)


def _summary(exp: Experiment, store: ResultsStore, figdir: Path, lang: str, quick: bool,
             seconds: float, write) -> None:
    from sharenorm.lab.experiments import analyze_stored

    results = analyze_stored(exp, store.runs_of(exp.id), figdir, lang, quick)
    verdicts = "; ".join(f"{r.claim} {r.verdict}: {r.measured}" for r in results)
    write(f"[{'/'.join(exp.claims)}] {exp.id} done in {seconds:.1f} s — {verdicts}")


class _NoBar:
    def __init__(self, echo):
        self.write = echo

    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, echo):
    if not enabled or total == 0:
        return _NoBar(echo)
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="lab", dynamic_ncols=True, file=sys.stderr)
