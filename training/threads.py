"""The intra-op thread count of CPU training, chosen by measuring steps under the machine's actual load.

Why: torch's OpenMP threads meet at a barrier after every operation. On a quiet machine two threads on two
cores are ~1.6× faster than one (tiny preset); but when another busy process takes one of the cores, the
thread that lost its core holds every barrier up until the scheduler runs it again, and a step gets ~7×
slower (docs/reliability.md, "Training under load"; benchmarks/bench_load.py measures it), while one
thread keeps its speed (66 / 67). Neither fixed choice is right for both cases, and the load changes
during a run, so ``ThreadGovernor`` measures:

- load: after every step it counts the runnable threads of other processes (``/proc/loadavg``'s runnable
  count less the running threads of this process and its DataLoader workers, ``LoadProbe``), averaged per
  window;
- start: torch's default thread count (``torch.get_num_threads()``: the cores, or ``OMP_NUM_THREADS``), or
  one thread when another process is already running;
- every ``WINDOW_STEPS`` steps it takes the median step time at the current count; now and then it tries
  the other count (1 ↔ the default) for one window, and keeps it when its median is ``MARGIN`` faster.
  Every core is tried only while no other process was seen running in the last window (a try beside a
  busy process is the collapse it avoids); one thread is tried at once when another process shows up.
- a try that is clearly worse (a step over ``ABORT`` × the current median) ends after that step, and each
  lost try doubles the wait before the next (up to ``MAX_INTERVAL`` windows), so trying costs a few % of
  the run on a quiet machine and nothing beside a busy process.

Knobs: ``CROSSCLR_THREADS=N`` fixes N threads (no measuring); so does ``OMP_NUM_THREADS`` when set; a run
with ``deterministic = true`` keeps its thread count (the count changes the order of reductions, so a
resumed run would not be bit-identical), and so do distributed runs and runs on a GPU.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from crossclr_infer.errors import CrossclrError
from crossclr_infer.hardware import MAX_WORKERS_PER_CORE, usable_cores

log = logging.getLogger(__name__)

ENV = "CROSSCLR_THREADS"  # a fixed intra-op thread count for training (unset or "auto": measured)
WINDOW_STEPS = 4  # steps per measurement
MARGIN = 0.10  # a try must be this much faster (median step time) to be kept
ABORT = 1.5  # a try whose step takes this many times the current median ends at once
MAX_INTERVAL = 32  # most windows between two tries


def _stat_fields(stat: Path) -> list[str] | None:
    """The fields of a ``/proc/<pid>/stat`` file after the command name: [state, ppid, ...]."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None  # a thread or process that ended meanwhile


def running_threads(proc: Path, pids: list[int]) -> int:
    """Threads in state R (running or runnable) right now, of the processes ``pids``."""
    n = 0
    for pid in pids:
        try:
            stats = list((proc / str(pid) / "task").glob("*/stat"))
        except OSError:
            continue
        for stat in stats:
            fields = _stat_fields(stat)
            n += bool(fields) and fields[0] == "R"
    return n


class LoadProbe:
    """Runnable threads of *other* processes right now: ``/proc/loadavg`` field 4 (the machine's runnable
    count) less the running threads of this process and its children (DataLoader workers; looked up every
    ``refresh`` calls), read before and after it; None where that is not known (not Linux)."""

    def __init__(self, proc: Path = Path("/proc"), pid: int | None = None, refresh: int = 16) -> None:
        self.proc, self.pid, self.refresh = proc, os.getpid() if pid is None else pid, refresh
        self._calls, self._pids = 0, [self.pid]

    def children(self) -> list[int]:
        out = []
        try:
            entries = [d for d in self.proc.iterdir() if d.name.isdigit()]
        except OSError:
            return out
        for d in entries:
            fields = _stat_fields(d / "stat")
            if fields and len(fields) > 1 and fields[1] == str(self.pid):
                out.append(int(d.name))
        return out

    def __call__(self) -> float | None:
        if self._calls % self.refresh == 0:
            self._pids = [self.pid, *self.children()]
        self._calls += 1
        before = running_threads(self.proc, self._pids)
        try:
            running = int((self.proc / "loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        own = max(before, running_threads(self.proc, self._pids), 1)  # at least the caller
        return float(max(0, running - own))


def fixed_threads(environ: os._Environ[str] | dict[str, str] = os.environ) -> int | None:
    """The thread count ``CROSSCLR_THREADS`` fixes (None: unset or ``auto``); a one-line error otherwise."""
    text = environ.get(ENV, "").strip().lower()
    if text in ("", "auto"):
        return None
    cores = usable_cores()
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS_PER_CORE * cores:
        raise CrossclrError(f"{ENV}={environ.get(ENV)!r}: expected 'auto' or a thread count from 1 to "
                            f"{MAX_WORKERS_PER_CORE * cores} (this process may use {cores} cores)")
    return int(text)


class ThreadGovernor:
    """Measures training steps and sets torch's intra-op threads to the faster of ``high`` and 1 (module
    docstring). Call ``restart()`` where the time between two calls of ``lap()`` is not a step (an epoch's
    start, after a checkpoint) and ``lap()`` after every step."""

    def __init__(self, high: int, start: int | None = None, *,
                 set_threads: Callable[[int], None] | None = None,
                 load: Callable[[], float | None] | None = None) -> None:
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self._set, self._load = set_threads, load or LoadProbe()
        self._was_busy = False
        self._others: list[float] = []  # other processes' runnable threads after each step of the window
        self.high = max(1, high)
        self.current = self.high if start is None else min(max(1, start), self.high)
        self.switches = 0
        self._times: list[float] = []
        self._baseline: float | None = None  # median step time of the last window at ``current``
        self._trying: int | None = None  # the count being tried
        self._interval = 1  # windows between tries
        self._until_try = 1
        self._last: float | None = None
        self._set(self.current)

    @property
    def active(self) -> bool:
        return self.high > 1

    def restart(self) -> None:
        """The next ``lap()`` starts a new step time (the time since the last one was not a step)."""
        self._last = None

    def lap(self, now: float | None = None) -> None:
        """One step done: its time (since the previous lap) goes into the measurement."""
        now = time.perf_counter() if now is None else now
        last, self._last = self._last, now
        if last is None or not self.active:
            return
        dt = now - last
        self._times.append(dt)
        others = self._load()
        if others is not None:
            self._others.append(others)
        if self._trying is not None:
            assert self._baseline is not None
            if dt > ABORT * self._baseline:
                self._end_try(kept=False)
            elif len(self._times) >= WINDOW_STEPS:
                self._end_try(kept=statistics.median(self._times) < (1 - MARGIN) * self._baseline)
            return
        if len(self._times) < WINDOW_STEPS:
            return
        self._baseline, self._times = statistics.median(self._times), []
        busy = bool(self._others) and statistics.fmean(self._others) >= 0.5
        arrived, self._was_busy, self._others = busy and not self._was_busy, busy, []
        self._until_try -= 1
        if self.current == self.high and arrived:
            self._until_try = 0  # another process showed up: one thread may be faster now
        if self._until_try > 0:
            return
        if self.current != self.high and busy:
            self._until_try = 1  # every core beside a busy process: the collapse; wait until it is gone
            return
        self._trying = 1 if self.current == self.high else self.high
        self._set(self._trying)

    def _end_try(self, kept: bool) -> None:
        tried, self._trying = self._trying, None
        assert tried is not None
        if kept:
            log.info("training threads: %d -> %d (median step %.3g s -> %.3g s)", self.current, tried,
                     self._baseline or 0.0, statistics.median(self._times))
            self.current, self.switches = tried, self.switches + 1
            self._baseline, self._interval = statistics.median(self._times), 1
        else:
            self._set(self.current)
            self._interval = min(2 * self._interval, MAX_INTERVAL)
        self._until_try = self._interval
        self._times, self._others = [], []


def training_threads(*, deterministic: bool, distributed: bool, cpu: bool) -> ThreadGovernor | None:
    """The thread policy of a training process (module docstring): a governor measuring 1 vs torch's
    default, or None where the count stays fixed (then ``CROSSCLR_THREADS`` may set it)."""
    import torch

    fixed = fixed_threads()
    if fixed is not None:
        torch.set_num_threads(fixed)
        log.debug("training threads: %d (%s)", fixed, ENV)
        return None
    high = min(torch.get_num_threads(), usable_cores())
    if deterministic or distributed or not cpu or os.environ.get("OMP_NUM_THREADS") or high < 2:
        return None
    probe = LoadProbe()
    others = probe()
    start = 1 if others else high
    log.debug("training threads: measured between 1 and %d, starting at %d (%s other runnable threads)",
              high, start, others)
    return ThreadGovernor(high, start, load=probe)
