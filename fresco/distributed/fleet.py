"""Fleets: many render jobs on a pool of Ray actors, each actor loading its models once and keeping them for the jobs
that follow. A job is exactly a `fresco render` (same folder, same files, resumable by a plain `fresco render`); an
actor that dies has its job re-run (resuming from the folder) on a fresh actor, a bounded number of times; a job whose
input or settings are wrong fails alone with its one-line message and the others finish."""
from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from .. import config as cfgmod
from ..config import RenderConfig
from ..knobs import shown
from ..video.render import render
from ..video.stylize import load_pipeline, make_stylizer, pipeline_key
from .cluster import actor_resources, connect, max_actors
from .pool import ActorPool

# errors that say the job itself is wrong (input, settings): never retried
JOB_ERRORS = (ValueError, FileNotFoundError, TypeError)


@dataclass
class Job:
    """One render: a name for the tables and its complete settings; `error` (and no config) for a job whose
    settings were refused when the jobs file was read: it fails alone, the others run."""
    name: str
    config: Optional[RenderConfig]
    error: Optional[str] = None


@dataclass
class JobResult:
    """How a job ended. status: "done" or "failed"; attempts: how many actors ran it; video: the output path."""
    name: str
    status: str
    seconds: float = 0.0
    attempts: int = 0
    batches: int = 0
    frames: int = 0
    video: Optional[str] = None
    error: Optional[str] = None


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of render keys, got {type(value).__name__}")
    return dict(value)


def _config_keys(entry: dict, base_dir: Path, where: str) -> dict:
    """A job entry's keys: those of its `config:` file (a path relative to the jobs file, or a mapping), then its own."""
    entry = dict(entry)
    ref = entry.pop("config", None)
    if isinstance(ref, str):
        path = Path(ref) if Path(ref).is_absolute() or Path(ref).exists() else base_dir / ref
        keys = cfgmod.load_yaml(path)
        keys = _mapping(keys, str(path))
    else:
        keys = _mapping(ref, f"{where}.config")
    keys.update(entry)
    return keys


def load_jobs(path: str | os.PathLike) -> list[Job]:
    """Jobs from a YAML file, in one of two forms (`defaults:` applies under every job in both):

        jobs:                              # a list of render configs
          - {file_path: a.mp4, save_path: out/a, prompt: "..."}
          - {config: published.yaml, prompt: "..."}   # a config file plus overrides
        ---
        config: base.yaml                  # (or an inline mapping) one config ...
        inputs: "clips/*.mp4"              # ... for every input the glob matches
        save_root: out                     # each input renders into save_root/<input name> (default: out)

    Every job's settings are validated here, each on its own: a job with a bad key or value comes back with its
    one-line `error` (and is reported failed by `render_many`) while the others run."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"jobs: '{path}' does not exist (a YAML file of render jobs)")
    data = cfgmod.load_yaml(path)
    if not isinstance(data, dict):
        raise ValueError(f"jobs: '{path}' must hold a mapping with 'jobs:' or 'config:' + 'inputs:'")
    base_dir = path.parent
    defaults = _mapping(data.get("defaults"), "defaults")
    unknown = set(data) - {"jobs", "config", "inputs", "save_root", "defaults"}
    if unknown:
        raise ValueError(f"jobs: unknown top-level keys {sorted(unknown)}; accepted: jobs, config, inputs, save_root, "
                         "defaults")
    entries: list[tuple[str, dict]] = []
    if "jobs" in data:
        if "inputs" in data:
            raise ValueError("jobs: give either 'jobs:' (a list) or 'config:' + 'inputs:', not both")
        if not isinstance(data["jobs"], list) or not data["jobs"]:
            raise ValueError("jobs: 'jobs:' must be a non-empty list of render configs")
        for i, entry in enumerate(data["jobs"]):
            keys = dict(defaults)
            keys.update(_config_keys(_mapping(entry, f"jobs[{i}]"), base_dir, f"jobs[{i}]"))
            name = keys.pop("name", None) or f"job{i}"
            if not isinstance(name, (str, int)) or not str(name).isprintable():
                raise ValueError(f"jobs[{i}].name: a one-line printable name, got {shown(name)}")
            entries.append((str(name), keys))
    elif "inputs" in data:
        pattern = data["inputs"]
        if not isinstance(pattern, str):
            raise ValueError(f"inputs: a glob pattern string, got {pattern!r}")
        full = pattern if os.path.isabs(pattern) else str(base_dir / pattern)
        matches = sorted(glob.glob(full)) or sorted(glob.glob(pattern))
        if not matches:
            raise ValueError(f"inputs: the pattern {pattern!r} matches no file")
        base = dict(defaults)
        base.update(_config_keys({"config": data.get("config")}, base_dir, "config"))
        root = data.get("save_root") or "out"
        if not isinstance(root, str) or "\0" in root:
            raise ValueError(f"save_root: a folder path (string), got {shown(root)}")
        root = Path(root)
        for m in matches:
            keys = dict(base, file_path=m, save_path=str(root / Path(m.rstrip("/")).stem))
            entries.append((Path(m.rstrip("/")).stem, keys))
    else:
        raise ValueError(f"jobs: '{path}' needs 'jobs:' (a list of configs) or 'config:' + 'inputs:' (a glob)")
    jobs = []
    for name, keys in entries:
        try:
            cfg = cfgmod.from_mapping(keys, f"job {name}")
            cfg.validate()
        except (ValueError, TypeError) as e:
            jobs.append(Job(name, None, f"job {name}: {e}"))
            continue
        jobs.append(Job(name, cfg))
    outs = [str(Path(j.config.save_path).resolve()) for j in jobs if j.config is not None]
    dup = sorted({o for o in outs if outs.count(o) > 1})
    if dup:
        raise ValueError(f"jobs: several jobs write into the same folder {dup[0]}; give each its own save_path")
    return jobs


class RenderWorker:
    """A render actor's body (ray.remote is applied by `render_many`): one FrescoPipeline per model, loaded on first
    use and kept for the jobs that follow."""

    def __init__(self):
        self._pipes: dict = {}

    def pid(self) -> int:
        return os.getpid()

    def _pipe(self, cfg: RenderConfig):
        key = pipeline_key(cfg)
        if key not in self._pipes:
            self._pipes[key] = load_pipeline(cfg)
        return self._pipes[key]

    def render_job(self, name: str, cfg: RenderConfig, events=None) -> dict:
        """Run one job; progress events ({"job", "kind", ...}) go to the `events` queue when given."""

        def emit(kind: str, **kw) -> None:
            if events is not None:
                events.put({"job": name, "kind": kind, "pid": os.getpid(), **kw})

        emit("start")
        stylizer = make_stylizer(cfg, pipe=self._pipe(cfg))
        count = 0

        def counted(frames, anchor_latents=None, on_anchor_record=None, frame_indices=None):
            nonlocal count
            out = stylizer(frames, anchor_latents, on_anchor_record, frame_indices=frame_indices)
            count += 1
            emit("batch", done=count)
            return out

        t = time.perf_counter()
        res = render(cfg, stylizer=counted, progress=False)
        emit("done")
        return {"video": str(res.video), "batches": len(res.batches), "frames": res.n_frames,
                "seconds": time.perf_counter() - t}


def _render_sequential(jobs: Sequence[Job], progress: bool, on_event) -> list[JobResult]:
    results = []
    for job in jobs:
        t = time.perf_counter()
        if on_event:
            on_event({"job": job.name, "kind": "start", "pid": os.getpid()})
        try:
            res = render(job.config, progress=progress)
        except JOB_ERRORS + (RuntimeError,) as e:
            results.append(JobResult(job.name, "failed", time.perf_counter() - t, 1, error=str(e)))
            continue
        results.append(JobResult(job.name, "done", time.perf_counter() - t, 1, len(res.batches), res.n_frames,
                                 str(res.video)))
    return results


def render_many(jobs: Sequence[Job], *, ray: bool = True, address: Optional[str] = None,
                num_actors: Optional[int] = None, max_retries: int = 2, progress: bool = True,
                on_event: Optional[Callable[[dict], None]] = None) -> list[JobResult]:
    """Render every job; returns one JobResult per job, in the jobs' order.

    ray=False renders them one after the other in this process. With Ray (local, `address`, or $RAY_ADDRESS):
    `num_actors` actors (default: as many as the cluster has GPUs, else CPUs, at most one per job), each holding a
    GPU (or a CPU); an actor that dies has its job re-run on a fresh actor, resuming from the output folder, at most
    `max_retries` times. `on_event(event)` sees every progress event: {"job", "kind": start|batch|done|retry|failed,
    "pid", ...}."""
    jobs = list(jobs)
    if not jobs:
        raise ValueError("jobs: nothing to render")
    good = [j for j in jobs if j.error is None]
    if len(good) < len(jobs):
        done = iter(render_many(good, ray=ray, address=address, num_actors=num_actors, max_retries=max_retries,
                                progress=progress, on_event=on_event) if good else [])
        return [next(done) if j.error is None else JobResult(j.name, "failed", error=j.error) for j in jobs]
    if not ray:
        return _render_sequential(jobs, progress, on_event)
    r = connect(address)
    from ray.util.queue import Empty, Queue

    names = [j.name for j in jobs]
    started = [0.0] * len(jobs)
    tries = [0] * len(jobs)
    batches_done = [0] * len(jobs)
    results: list[Optional[JobResult]] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=not progress)

    def note(ev: dict) -> None:
        if ev.get("kind") == "retry":
            ev = {"job": names[ev["key"]], **ev}
        i = names.index(ev["job"])
        if ev["kind"] == "start":
            tries[i] += 1
        elif ev["kind"] == "batch":
            batches_done[i] = ev["done"]
        if progress and ev["kind"] in ("retry", "failed"):
            bar.write(f"fresco: job {ev['job']}: {ev['kind']} {ev.get('attempt', '')}{ev.get('error', '')}")
        if on_event:
            on_event(ev)

    events = Queue()
    pool = ActorPool(r, r.remote(**actor_resources(r))(RenderWorker),
                     max(1, min(len(jobs), num_actors or max_actors(r))), max_retries=max_retries, on_event=note)
    try:
        for i, job in enumerate(jobs):
            started[i] = time.perf_counter()
            pool.submit(i, "render_job", job.name, job.config, events)
        while pool.busy:
            finished = pool.wait(timeout=0.2)
            while True:
                try:
                    note(events.get_nowait())
                except Empty:
                    break
            for i, err, out in finished:
                secs = time.perf_counter() - started[i]
                if err is None:
                    results[i] = JobResult(names[i], "done", secs, tries[i], out["batches"], out["frames"],
                                           out["video"])
                else:
                    msg = str(err) if isinstance(err, JOB_ERRORS) else f"{type(err).__name__}: {err}"
                    results[i] = JobResult(names[i], "failed", secs, max(1, tries[i]), batches_done[i], error=msg)
                    note({"job": names[i], "kind": "failed", "error": msg})
                bar.update(1)
    finally:
        bar.close()
        pool.shutdown()
        events.shutdown()
    return [res for res in results if res is not None]


def summary_table(results: Sequence[JobResult]) -> str:
    """A plain-text table: job, status, attempts, batches, frames, seconds, output or error."""
    rows = [("job", "status", "tries", "batches", "frames", "seconds", "output / error")]
    for r in results:
        rows.append((r.name, r.status, str(r.attempts), str(r.batches), str(r.frames), f"{r.seconds:.1f}",
                     r.video if r.status == "done" else (r.error or "")))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    return "\n".join(lines)


def print_summary(results: Sequence[JobResult], file=None) -> None:
    """The summary table on `file` (default: sys.stdout as it is at the call, not at import)."""
    print(summary_table(results), file=file or sys.stdout)
