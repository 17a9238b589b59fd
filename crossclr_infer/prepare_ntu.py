"""``crossclr prepare ntu``: a folder of raw NTU RGB+D ``.skeleton`` files -> an HDF5 cache of one benchmark.

The reader, sample names, benchmarks and action names are ``ntu.py``'s; the preprocessing is
``preprocess.py``'s; this module plans which files go where, runs them (optionally in a process pool) and
writes the cache.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.ntu import (
    Benchmark,
    class_names,
    get_benchmark,
    parse_ntu_name,
    read_name_list,
    read_skeleton,
    sample_name,
)
from crossclr_infer.preprocess import MODES, normalize_sequence, select_bodies, sequence_length
from crossclr_infer.skeleton import check_coordinates

log = logging.getLogger(__name__)

MIN_VALID_FRAMES = 2  # fewer frames with a body: counted as a missing skeleton
SKIP_REASONS = ("parse error", "no skeleton", "not in benchmark", "ignored", "duplicate")
NTU_LAYOUT = "ntu-rgb+d"


@dataclass(frozen=True)
class PrepareSummary:
    """What ``prepare_ntu`` wrote and what it skipped (reason -> sample names)."""

    out: Path
    benchmark: str
    files: int
    written: dict[str, int]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # sample name -> parse error message

    def lines(self) -> list[str]:
        out = [f"{self.out}: {sum(self.written.values())} samples from {self.files} files "
               f"({self.benchmark})"]
        out += [f"  {split}: {n}" for split, n in self.written.items()]
        for reason in SKIP_REASONS:
            names = self.skipped.get(reason, [])
            if names:
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                out.append(f"  skipped ({reason}): {len(names)}  [{shown}]")
        return out


@dataclass(frozen=True)
class _Job:
    path: Path
    name: str
    split: str
    mode: str
    frames: int
    min_frames: int


@dataclass(frozen=True)
class _Result:
    name: str
    split: str
    data: np.ndarray | None
    length: int
    reason: str | None = None
    message: str = ""


@dataclass
class _Skips:
    """Skipped samples by reason, and the message of each skipped sample that has one."""

    names: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in SKIP_REASONS})
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, name: str, message: str | None = None) -> None:
        self.names[reason].append(name)
        if message is not None:
            self.errors[name] = message


def _process(job: _Job) -> _Result:
    """Parse and preprocess one file (runs in worker processes)."""
    try:
        raw = read_skeleton(job.path)
        check_coordinates(raw.xyz, str(job.path))
    except CrossclrError as e:
        return _Result(job.name, job.split, None, 0, "parse error", str(e))
    if int(np.count_nonzero(raw.bodies_per_frame)) < job.min_frames:
        return _Result(job.name, job.split, None, 0, "no skeleton",
                       f"{int(np.count_nonzero(raw.bodies_per_frame))} frames with a body")
    x = select_bodies(raw, job.mode)  # (3, T, V, M)
    length = sequence_length(x, job.mode)
    try:
        data = normalize_sequence(x, get_layout(NTU_LAYOUT), mode=job.mode, frames=job.frames)
    except CrossclrError as e:
        return _Result(job.name, job.split, None, 0, "no skeleton", str(e))
    return _Result(job.name, job.split, data, length)


def find_skeleton_files(raw_dir: str | Path) -> list[Path]:
    """All ``*.skeleton`` files under ``raw_dir`` (recursively), sorted by sample name then path."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise CrossclrError(f"{raw_dir}: not a folder; expected the folder of NTU .skeleton files")
    files = sorted(raw_dir.rglob("*.skeleton"), key=lambda p: (p.name, str(p)))
    if not files:
        raise CrossclrError(f"{raw_dir}: no .skeleton files found (expected NTU RGB+D raw skeleton files)")
    return files


def _plan_jobs(files: list[Path], bench: Benchmark, ignored: set[str], skips: _Skips, *, mode: str,
               frames: int, min_frames: int) -> list[_Job]:
    """One job per file of the benchmark (first of duplicate names, not ignored); the rest is skipped."""
    jobs: list[_Job] = []
    seen: set[str] = set()
    for path in files:
        name = sample_name(path)
        try:
            split = bench.split_of(parse_ntu_name(name))
        except CrossclrError as e:
            skips.add("parse error", name, str(e))
            continue
        if name in seen:
            skips.add("duplicate", name)
        elif split is None:
            skips.add("not in benchmark", name)
        elif name in ignored:
            skips.add("ignored", name)
        else:
            seen.add(name)
            jobs.append(_Job(path, name, split, mode, frames, min_frames))
    return jobs


@contextmanager
def _results(jobs: list[_Job], workers: int) -> Iterator[Iterator[_Result]]:
    """The results of ``jobs`` in order: from a pool of ``workers`` processes when > 1, else here."""
    pool = multiprocessing.get_context().Pool(workers) if workers > 1 else None
    try:
        yield pool.imap(_process, jobs, chunksize=4) if pool is not None else map(_process, jobs)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _write_cache(out: Path, benchmark: str, jobs: list[_Job], *, source: str | Path, workers: int,
                 progress: bool, skips: _Skips) -> dict[str, int]:
    """Process ``jobs`` and write the usable samples to the cache ``out``; returns samples per split."""
    from tqdm import tqdm

    from crossclr_infer.cache import CacheWriter

    job = jobs[0]
    params = {"mode": job.mode, "frames": job.frames, "max_bodies": 2, "source": "ntu-raw",
              "min_frames": job.min_frames}
    written = {"train": 0, "val": 0}
    with _results(jobs, workers) as results, CacheWriter(
            out, layout=get_layout(NTU_LAYOUT), class_names=class_names(benchmark), benchmark=benchmark,
            frames=job.frames, num_person=2, preprocess=params) as writer:
        for res in tqdm(results, total=len(jobs), desc=f"prepare {benchmark}", unit="file",
                        disable=not progress):
            if res.data is None:
                assert res.reason is not None
                skips.add(res.reason, res.name, res.message)
                log.info("skipped %s (%s): %s", res.name, res.reason, res.message)
                continue
            writer.add(res.split, res.data, parse_ntu_name(res.name).label, res.name, res.length)
            written[res.split] += 1
        if not any(written.values()):
            first = next((skips.errors[j.name] for j in jobs if skips.errors.get(j.name)), "")
            raise CrossclrError(f"{source}: no usable sample of {benchmark} (all {len(jobs)} skipped; "
                                f"first: {first})")
    return written


def prepare_ntu(raw_dir: str | Path, benchmark: str, out: str | Path, *, preprocess: str = "official",
                frames: int = 50, ignore_list: str | Path | None = None, workers: int = 1,
                min_frames: int = MIN_VALID_FRAMES, progress: bool = True) -> PrepareSummary:
    """Raw NTU ``.skeleton`` files -> an HDF5 cache of one benchmark (splits train / val).

    Files outside the benchmark, in the ignore list, unparseable (including non-finite coordinates or
    coordinates beyond ±``skeleton.MAX_ABS_COORDINATE``) or without a skeleton (no body in
    any frame, fewer than ``min_frames`` frames with a body, or no valid frame for the preprocessing)
    are skipped and counted by reason. ``out`` may not be one of the input files.
    ``workers`` > 1 parses in a process pool (results in order)
    while this process writes. The cache appears at ``out`` only when complete.
    """
    from crossclr_infer.cache import check_not_input

    bench = get_benchmark(benchmark)
    if preprocess not in MODES:
        raise CrossclrError(f"unknown preprocessing {preprocess!r}; expected one of {list(MODES)}")
    if frames < 1 or workers < 1:
        raise CrossclrError(f"frames and workers must be >= 1, got frames={frames}, workers={workers}")
    out = Path(out)
    files = find_skeleton_files(raw_dir)
    check_not_input(out, [*files, *([ignore_list] if ignore_list is not None else [])])
    ignored = read_name_list(ignore_list) if ignore_list is not None else set()
    skips = _Skips()
    jobs = _plan_jobs(files, bench, ignored, skips, mode=preprocess, frames=frames, min_frames=min_frames)
    if not jobs:
        raise CrossclrError(f"{raw_dir}: none of the {len(files)} .skeleton files belongs to {benchmark}")
    written = _write_cache(out, benchmark, jobs, source=raw_dir, workers=workers, progress=progress,
                           skips=skips)
    summary = PrepareSummary(out, benchmark, len(files), written,
                             {k: sorted(v) for k, v in skips.names.items() if v}, skips.errors)
    for line in summary.lines():
        log.info(line)
    return summary
