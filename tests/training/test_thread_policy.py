"""Training threads under load (docs/reliability.md): the governor's decisions on scripted step times (a fake
clock, no timing of real work), the knobs, and the cases where the count must stay fixed. The speed itself
is measured in benchmarks/bench_load.py, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crossclr_infer.errors import CrossclrError
from training import threads
from training.threads import ABORT, MAX_INTERVAL, WINDOW_STEPS, ThreadGovernor


class Machine:
    """Step times per thread count: ``speed[n]`` seconds per step with n threads (the load scenario)."""

    def __init__(self, speed: dict[int, float], others: float | None = 0.0) -> None:
        self.speed, self.threads, self.now, self.calls = dict(speed), 0, 0.0, []
        self.others = others  # runnable threads of other processes (None: not known)

    def set(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)

    def run(self, gov: ThreadGovernor, steps: int) -> list[int]:
        """``steps`` training steps; the thread count of each."""
        used = []
        for _ in range(steps):
            used.append(self.threads)
            self.now += self.speed[self.threads]
            gov.lap(self.now)
        return used


def governor(machine: Machine, high: int = 2, start: int | None = None) -> ThreadGovernor:
    gov = ThreadGovernor(high, start, set_threads=machine.set, load=lambda: machine.others)
    gov.lap(machine.now)  # the clock starts
    return gov


def test_quiet_machine_keeps_every_core_and_tries_one_thread_rarely() -> None:
    m = Machine({2: 0.15, 1: 0.24})  # quiet: two threads 1.6x faster
    gov = governor(m)
    used = m.run(gov, 400)
    assert gov.current == 2 and gov.switches == 0
    tries = sum(1 for a, b in zip(used, used[1:], strict=False) if a == 2 and b == 1)
    assert used.count(1) == tries  # each try of one thread ends after its first, slower step (ABORT)
    assert tries <= 7  # 1, 2, 4 ... MAX_INTERVAL windows apart
    assert 0.24 / 0.15 > ABORT


def test_a_busy_competitor_moves_training_to_one_thread_and_back_when_it_leaves() -> None:
    m = Machine({2: 0.15, 1: 0.24})
    gov = governor(m)
    assert m.run(gov, 20).count(2) == 18  # one-step tries of one thread after windows 1 and 3
    m.speed, m.others = {2: 1.0, 1: 0.24}, 1.0  # one busy process on one of 2 cores: two threads collapse
    used = m.run(gov, 200)
    assert gov.current == 1 and gov.switches == 1
    assert used.count(2) <= WINDOW_STEPS + 1 and used[WINDOW_STEPS + 1] == 1  # one thread tried at once
    assert used[-150:] == [1] * 150  # every core is not tried beside the busy process
    m.speed, m.others = {2: 0.15, 1: 0.24}, 0.0  # the competitor is gone
    used = m.run(gov, 3 * WINDOW_STEPS)
    assert gov.current == 2 and used[-1] == 2 and gov.switches == 2


def test_without_a_load_measure_timing_alone_decides() -> None:
    m = Machine({2: 1.0, 1: 0.24}, others=None)  # loaded, but the load is not known (not Linux)
    gov = governor(m)
    used = m.run(gov, 1000)  # 250 windows: tries after 1, 2, 4 ... 32, then every 32 windows
    assert gov.current == 1 and gov.switches == 1 and used[WINDOW_STEPS] == 1
    assert used.count(2) <= WINDOW_STEPS + 12 and gov._interval == MAX_INTERVAL


def test_a_loaded_start_begins_at_one_thread_and_stays_there() -> None:
    m = Machine({2: 1.0, 1: 0.24}, others=1.0)
    gov = governor(m, start=1)
    assert m.run(gov, 400) == [1] * 400 and m.calls == [1]


def test_a_try_must_win_by_the_margin() -> None:
    m = Machine({2: 0.20, 1: 0.19})  # one thread 5 % faster: noise, not a reason to switch
    gov = governor(m)
    m.run(gov, 200)
    assert gov.current == 2 and gov.switches == 0


def test_restart_drops_the_time_between_epochs_and_one_core_is_inactive() -> None:
    m = Machine({2: 0.15, 1: 0.24})
    gov = governor(m)
    m.run(gov, WINDOW_STEPS - 1)
    m.now += 100.0  # a checkpoint written between two epochs
    gov.restart()
    gov.lap(m.now)
    m.run(gov, 50)
    assert gov.current == 2 and gov.switches == 0
    one_core = Machine({1: 1.0})
    single = ThreadGovernor(1, set_threads=one_core.set)
    assert not single.active
    assert one_core.run(single, 20) == [1] * 20 and one_core.calls == [1]


def test_crossclr_threads_fixes_the_count_and_bad_values_are_one_line(monkeypatch) -> None:
    assert threads.fixed_threads({}) is None and threads.fixed_threads({"CROSSCLR_THREADS": "auto"}) is None
    assert threads.fixed_threads({"CROSSCLR_THREADS": "1"}) == 1
    for bad in ("0", "-1", "two", "1e9", "100000"):
        with pytest.raises(CrossclrError, match="CROSSCLR_THREADS=.*expected 'auto' or a thread count") as e:
            threads.fixed_threads({"CROSSCLR_THREADS": bad})
        assert "\n" not in str(e.value)


def test_when_the_count_stays_fixed(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.delenv("CROSSCLR_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert threads.training_threads(deterministic=True, distributed=False, cpu=True) is None
        assert threads.training_threads(deterministic=False, distributed=True, cpu=True) is None
        assert threads.training_threads(deterministic=False, distributed=False, cpu=False) is None
        monkeypatch.setenv("CROSSCLR_THREADS", "1")
        assert threads.training_threads(deterministic=False, distributed=False, cpu=True) is None
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def _proc(root: Path, pid: int, ppid: int, states: list[str]) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "stat").write_text(f"{pid} (py (x) y) {states[0]} {ppid} 3 4\n")
    for i, state in enumerate(states):
        task = root / str(pid) / "task" / str(pid + i)
        task.mkdir(parents=True)
        task.joinpath("stat").write_text(f"{pid + i} (py (x) y) {state} {ppid} 3 4\n")


def test_load_probe_counts_other_processes_not_ours_nor_our_workers(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _proc(proc, 100, 1, ["R", "S", "R"])  # this process: 2 running threads
    _proc(proc, 200, 100, ["R"])  # its DataLoader worker, running
    _proc(proc, 300, 1, ["R"])  # someone else's
    (proc / "loadavg").write_text("7.60 4.75 2.56 6/145 14071\n")
    probe = threads.LoadProbe(proc, pid=100)
    assert probe.children() == [200]
    assert probe() == 3.0  # 6 runnable - 2 own threads - 1 worker
    (proc / "loadavg").write_text("0.1 0.1 0.1 1/145 14071\n")
    assert probe() == 0.0
    (proc / "loadavg").write_text("garbage")
    assert probe() is None
    assert threads.LoadProbe(tmp_path / "none", pid=1)() is None
    assert threads.LoadProbe()() is not None  # this very process, read from /proc


def test_the_trainer_times_every_step_and_restarts_the_clock_each_epoch(tmp_path: Path, monkeypatch) -> None:
    from tests.training.test_trainer import make_toy_cache, tiny_cfg
    from training import trainer

    made: list[dict] = []

    class Spy(ThreadGovernor):
        def __init__(self) -> None:
            super().__init__(2, set_threads=lambda n: None, load=lambda: 0.0)
            self.laps = self.restarts = 0

        def lap(self, now: float | None = None) -> None:
            self.laps += 1
            super().lap(now)

        def restart(self) -> None:
            self.restarts += 1
            super().restart()

    spies: list[Spy] = []

    def policy(**kwargs) -> Spy:
        made.append(kwargs)
        spies.append(Spy())
        return spies[-1]

    monkeypatch.setattr(trainer, "training_threads", policy)
    cache = make_toy_cache(tmp_path / "toy.h5")
    result = trainer.train(tiny_cfg(), cache, tmp_path / "run", progress=False)
    assert made == [{"deterministic": False, "distributed": False, "cpu": True}]
    steps = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert result.epochs_done == 2 and spies[0].laps == steps > 0 and spies[0].restarts == 2
