"""`fresco render-many JOBS.yaml [--ray [ADDRESS]]`, and the `--ray`/`--actors` flags of `fresco render` (one video
across several actors by a step wavefront)."""
from __future__ import annotations

import argparse
import os
import sys

from .cluster import check_address


def ray_address(value: str) -> str:
    """--ray's ADDRESS, checked as it is parsed: an optional value takes the next word, so `--ray jobs.yaml` read the
    jobs file as the address and then said the jobs file was missing."""
    if value == "":
        return value
    try:
        return check_address(value, "ADDRESS")
    except ValueError as e:
        hint = (f"; {value!r} is a file: put it before --ray, or write --ray local for a local Ray instance"
                if os.path.exists(value) else "")
        raise argparse.ArgumentTypeError(f"{e}{hint}") from None


def add_ray_flags(p: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS] and --actors K: run on Ray (a local instance when no address and no $RAY_ADDRESS)."""
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", type=ray_address,
                   help="run on Ray: a local instance, or the cluster at ADDRESS: auto, local, ray://HOST[:PORT] or "
                        "HOST:PORT (default $RAY_ADDRESS)")
    p.add_argument("--actors", type=int, default=None,
                   help="Ray actors to use (default: one per GPU of the cluster, else per CPU)")


def add_parser(sub) -> None:
    p = sub.add_parser("render-many", help="render a list of jobs (a YAML file), on Ray with --ray",
                       description="Render every job of JOBS (a YAML file: 'jobs:' = a list of render configs, or "
                                   "'config:' + 'inputs:' glob + 'save_root:'). Each job's folder is the same as "
                                   "`fresco render` makes, so any of them can be resumed with `fresco render`.")
    p.add_argument("jobs", help="the jobs YAML file")
    add_ray_flags(p)
    p.add_argument("--max-retries", dest="max_retries", type=int, default=2,
                   help="re-runs of a job whose actor died (default 2)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def check_actors(actors) -> None:
    if actors is not None and actors < 1:
        raise ValueError(f"--actors: a positive number of Ray actors, got {actors}")


def run_many(args: argparse.Namespace) -> int:
    """Exit code: 0 when every job finished, 1 when any failed (the table says which and why), 2 (an error line,
    nothing started) when the file is bad or every job in it has a bad setting."""
    from .fleet import load_jobs, print_summary, render_many
    check_actors(args.actors)
    if args.max_retries < 0:
        raise ValueError(f"--max-retries: a number >= 0, got {args.max_retries}")
    jobs = load_jobs(args.jobs)
    if all(j.error is not None for j in jobs):
        more = f" (and {len(jobs) - 1} more job(s), all with bad settings)" if len(jobs) > 1 else ""
        raise ValueError(f"{jobs[0].error}{more}")
    results = render_many(jobs, ray=args.ray is not None, address=args.ray or None, num_actors=args.actors,
                          max_retries=args.max_retries, progress=not args.quiet)
    print_summary(results)
    return 0 if all(r.status == "done" for r in results) else 1


def render_on_ray(cfg, args: argparse.Namespace):
    """`fresco render --ray`: the wavefront renderer over --actors actors (default 2)."""
    from .wavefront import render_wavefront
    check_actors(args.actors)
    return render_wavefront(cfg, num_actors=args.actors or 2, address=args.ray or None, progress=not args.quiet)


