"""Outputs never destroy inputs, one run writes an output at a time, and every failure is one line with a
meaningful exit status (docs/reliability.md): each test builds its situation itself and
checks the exit status, the one line naming the file or option, and that nothing was written or replaced."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.fileio import (
    HOST_TAG,
    atomic_output,
    atomic_output_dir,
    check_outputs,
    lock_path,
    output_lock,
    remove_stale_temps,
)
from tests.helpers import cli_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
NAME_MAX = 255


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes; folders as empty entries."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def _files(folder: Path, **extra: bytes) -> dict[str, Path]:
    """Placeholder input files: the output checks run before any input is read."""
    names = {"s.h5": b"cache", "m.onnx": b"model", "pretrain.pt": b"ckpt", "metrics.jsonl": b'{"step": 1}\n',
             "a.npz": b"npz", "r1.json": b"{}", "ignore.txt": b"", **extra}
    out = {}
    for name, data in names.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[name] = p
    return out


def _subprocess_cli(args: list[str], *, fsize: int | None = None, timeout: float = 300
                    ) -> subprocess.CompletedProcess:
    """``python -m cli ARGS`` in a fresh process (optionally under ``ulimit -f`` of ``fsize`` bytes)."""
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# ----------------------------------------------------------------------------- item 3: outputs vs inputs


def _cases(t: Path) -> list[tuple[list[str], str, str]]:
    """(argv, the output option with its value as printed, the input it would destroy)."""
    f = _files(t, **{"lin1/linear.pt": b"linear", "d/s.h5": b"cache", "raw/x.skeleton": b"1"})
    s, m, p, lin = str(f["s.h5"]), str(f["m.onnx"]), str(f["pretrain.pt"]), str(f["lin1/linear.pt"])
    link = t / "link.json"
    link.symlink_to(f["s.h5"])
    return [
        (["evaluate", "--data", s, "--model", m, "--report", s], f"--report {s}", s),
        (["evaluate", "--data", s, "--model", m, "--report", m], f"--report {m}", m),
        (["evaluate", "--data", s, "--model", m, "--plots", str(t)], f"--plots {t}", s),
        (["knn", "--data", s, "--checkpoint", p, "--json", p], f"--json {p}", p),
        (["linear", "--data", s, "--checkpoint", p, "--out", str(t / "o"), "--json", s], f"--json {s}", s),
        (["linear", "--data", s, "--checkpoint", p, "--out", str(t / "o"), "--json", str(link)],
         f"--json {link}", s),
        (["linear", "--data", s, "--checkpoint", lin, "--out", str(t / "lin1")], f"--out {t / 'lin1'}", lin),
        (["linear", "--data", s, "--checkpoint", lin, "--eval-only", "--plots", "--out", str(t / "lin1")],
         f"--out {t / 'lin1'}", lin),
        (["finetune", "--data", s, "--checkpoint", lin, "--out", str(t)], f"--out {t}", s),
        (["tsne", "--data", s, "--checkpoint", lin, "--out", str(t / "lin1")], f"--out {t / 'lin1'}", lin),
        (["plot-metrics", str(f["metrics.jsonl"]), "--out", str(f["metrics.jsonl"])],
         f"--out {f['metrics.jsonl']}", str(f["metrics.jsonl"])),
        (["plot-metrics", str(t), "--json", str(f["metrics.jsonl"])], f"--json {f['metrics.jsonl']}",
         str(f["metrics.jsonl"])),
        (["export", "--checkpoint", lin, "--out", str(t / "lin1"), "--overwrite"], f"--out {t / 'lin1'}",
         lin),
        (["export", "--checkpoint", lin, "--data", s, "--out", str(t)], f"--out {t}", lin),
        (["train", "--data", str(t / "d" / "s.h5"), "--config", "tiny", "--out", str(t / "d")],
         f"--out {t / 'd'}", str(t / "d" / "s.h5")),
        (["prepare", "arrays", str(f["a.npz"]), "--layout", "ntu-rgb+d", "--out", str(f["a.npz"])],
         f"--out {f['a.npz']}", str(f["a.npz"])),
        (["prepare", "ntu", str(t / "raw"), "--benchmark", "ntu60-xsub", "--ignore-list",
          str(f["ignore.txt"]), "--out", str(f["ignore.txt"])], f"--out {f['ignore.txt']}",
         str(f["ignore.txt"])),
        (["merge-reports", str(f["r1.json"]), "--out", str(f["r1.json"])], f"--out {f['r1.json']}",
         str(f["r1.json"])),
        (["import-official", p, "--out", p], f"--out {p}", p),
    ]


def test_an_output_that_is_or_holds_an_input_is_refused_by_every_command(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture
                                                                         ) -> None:
    pytest.importorskip("torch")
    for argv, output, victim in _cases(tmp_path):
        before = _snapshot(tmp_path)
        code, out, err = run_cli(argv, capsys)
        assert code == 1, (argv, err)
        line = _one_line(err)
        assert line.startswith(f"error: {output}: ") and victim in line, (argv, line)
        assert "destroy the input" in line, line
        assert _snapshot(tmp_path) == before, argv


def test_check_outputs_allows_outputs_beside_or_inside_input_folders(tmp_path: Path) -> None:
    f = _files(tmp_path)
    check_outputs({"--out": tmp_path / "curves.png", "--json": None}, {"METRICS": f["metrics.jsonl"]})
    check_outputs({"--out": tmp_path / "raw" / "x.h5"}, {"RAW_DIR": tmp_path, "--ignore-list": None})
    hard = tmp_path / "hard.h5"
    os.link(f["s.h5"], hard)
    with pytest.raises(ValueError, match=f"--report {hard}: is the input --data"):
        check_outputs({"--report": hard}, {"--data": f["s.h5"]})


# ------------------------------------------------------------------------------- item 4: one writer


_HOLDER = """
import sys, time
from crossclr_infer.fileio import output_lock
with output_lock(sys.argv[1], mkdir=True):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock of output ``path`` (as a running command does)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _lock_cases(t: Path) -> list[tuple[list[str], Path]]:
    f = _files(t)
    s, p = str(f["s.h5"]), str(f["pretrain.pt"])
    run, lin, ft, models, cache = t / "run", t / "lin", t / "ft", t / "models", t / "new.h5"
    return [
        (["train", "--data", s, "--config", "tiny", "--out", str(run), "--device", "cpu"], run),
        (["linear", "--data", s, "--checkpoint", p, "--out", str(lin)], lin),
        (["finetune", "--data", s, "--checkpoint", p, "--out", str(ft)], ft),
        (["export", "--checkpoint", p, "--out", str(models)], models),
        (["prepare", "arrays", str(f["a.npz"]), "--layout", "ntu-rgb+d", "--out", str(cache)], cache),
        (["synth", "--out", str(cache), "--classes", "2", "--per-class", "2"], cache),
    ]


def test_a_second_run_on_a_locked_output_is_refused_naming_the_holder(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch")
    for argv, output in _lock_cases(tmp_path):
        holder = _holder(output)
        try:
            before = _snapshot(tmp_path)
            err = cli_error(argv, capsys)
            assert err.startswith(f"error: --out {output}: another run (pid {holder.pid}) is writing it"), err
            assert _snapshot(tmp_path) == before, argv
        finally:
            holder.kill()
            holder.wait()


def test_a_killed_holder_never_blocks_the_next_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c.h5"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # a killed process cannot remove its lock file, but holds no lock
    code, stdout, err = run_cli(["synth", "--out", str(out), "--classes", "2", "--per-class", "2"], capsys)
    assert code == 0, err
    assert out.is_file() and not lock_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_the_lock_is_released_after_an_error_and_held_during_the_block(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), output_lock(out, mkdir=True) as lock:
        assert lock.read_text().strip() == str(os.getpid())
        probe = subprocess.run([sys.executable, "-c", _HOLDER, str(out)], cwd=ROOT, capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
        assert probe.returncode != 0 and f"pid {os.getpid()}" in probe.stderr
        (tmp_path / "alias").symlink_to(tmp_path)
        other_spelling = tmp_path / "alias" / "." / "run"
        with pytest.raises(ValueError, match=f"--out {other_spelling}: another run \\(pid {os.getpid()}\\)"):
            with output_lock(other_spelling):
                pass
        (tmp_path / "alias").unlink()
        raise RuntimeError("the run failed")
    with output_lock(out):  # free again
        pass
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ item 11: ulimit -f while writing a cache


def test_a_file_size_limit_during_synth_is_one_line_and_exit_1_not_a_segfault(tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    res = _subprocess_cli(["synth", "--out", str(out), "--classes", "4", "--per-class", "20"], fsize=200_000)
    assert res.returncode == 1, (res.returncode, res.stderr)
    line = _one_line(res.stderr)
    assert line.startswith(f"error: {out}: could not be written: File too large"), line
    assert list(tmp_path.iterdir()) == []  # no cache, no temp file, no lock file


def test_a_file_size_limit_during_prepare_arrays_is_one_line_and_exit_1(tmp_path: Path) -> None:
    npz = tmp_path / "a.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, data=rng.normal(size=(40, 3, 50, 25, 2)).astype(np.float32),
             label=np.arange(40) % 4)
    out = tmp_path / "a.h5"
    res = _subprocess_cli(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(out)],
                          fsize=200_000)
    assert res.returncode == 1, (res.returncode, res.stderr)
    line = _one_line(res.stderr)
    assert line.startswith(f"error: {out}: could not be written"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


# ----------------------------------------------------------------- item 13: errors that are not user errors


def test_an_unexpected_error_is_one_line_naming_the_command_and_input(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import crossclr_infer.cache as cache_module

    def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("layout_name")

    monkeypatch.setattr(cache_module, "open_cache", bug)
    monkeypatch.setattr("crossclr_infer.commands.cache.open_cache", bug)
    monkeypatch.delenv("CROSSCLR_DEBUG", raising=False)
    cache = _files(tmp_path)["s.h5"]
    code, _, err = run_cli(["info", str(cache)], capsys)
    line = _one_line(err)
    assert code == 1
    assert line.startswith(f"error: crossclr info ({cache}): unexpected KeyError: 'layout_name'"), line
    assert "--debug" in line and "Traceback" not in err
    code, _, err = run_cli(["--debug", "info", str(cache)], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err and "KeyError" in err
    monkeypatch.setenv("CROSSCLR_DEBUG", "1")
    code, _, err = run_cli(["info", str(cache)], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err


def test_deeply_nested_metrics_and_huge_shard_counts_are_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("torch", reason="plot-metrics is a command of the training side (extra 'train')")
    f = _files(tmp_path)
    deep = f["metrics.jsonl"]
    deep.write_text("[" * 100_000 + "\n")
    before = _snapshot(tmp_path)
    err = cli_error(["plot-metrics", str(deep)], capsys)
    assert err.startswith(f"error: {deep}: line 1: JSON nested too deeply"), err
    err = cli_error(["evaluate", "--data", str(f["s.h5"]), "--model", str(f["m.onnx"]), "--shard",
                     "0/99999999999999999999999"], capsys)
    assert err.startswith("error: --shard 0/99999999999999999999999: more than 100000 shards"), err
    assert _snapshot(tmp_path) == before


def _tiny_config(folder: Path) -> Path:
    cfg = folder / "tiny.toml"
    cfg.write_text("layout = \"ntu-rgb+d\"\nbatch_size = 8\nnum_workers = 0\nmallopt = false\n"
                   "save_every = 1\ncross_epoch = 1\n[model]\nbase_channels = 4\nhidden_dim = 16\n"
                   "feature_dim = 8\nstage_blocks = [1, 1, 1]\n[ssl]\nqueue_size = 24\n")
    return cfg


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.training.test_trainer import make_toy_cache

    return make_toy_cache(tmp_path_factory.mktemp("toy") / "toy.h5")


def test_a_full_disk_while_saving_a_resumed_checkpoint_keeps_the_old_one(toy: Path, tmp_path: Path) -> None:
    from tests.training.test_trainer import tiny_cfg
    from training.trainer import train

    run = tmp_path / "run"
    train(tiny_cfg(epochs=1), toy, run, progress=False)
    old = (run / "pretrain.pt").read_bytes()
    res = _subprocess_cli(["train", "--data", str(toy), "--out", str(run), "--resume", "--epochs", "2",
                           "--device", "cpu", "--no-progress"], fsize=100_000)
    assert res.returncode == 1, res.stderr
    line = _one_line(res.stderr)
    assert line.startswith(f"error: {run / 'pretrain.pt'}: could not be written"), line
    assert "previous file is kept" in line
    assert (run / "pretrain.pt").read_bytes() == old
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "pretrain.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ------------------------------------------------------------------------ item 16: temp names, SIGTERM


def test_a_250_character_output_name_is_written_and_its_temp_names_fit_name_max(tmp_path: Path) -> None:
    name = "a" * 246 + ".h5"  # 249 bytes: a valid name
    out = tmp_path / name
    with atomic_output(out) as tmp:
        assert len(tmp.name.encode()) <= NAME_MAX
        tmp.write_bytes(b"x")
    assert out.read_bytes() == b"x"
    folder = tmp_path / ("é" * 120)  # 240 bytes of UTF-8
    for _ in range(2):  # the second write moves the first folder aside under a name that must fit too
        with atomic_output_dir(folder) as tmp:
            assert len(tmp.name.encode()) <= NAME_MAX
            (tmp / "f").write_text("1")
    assert len(lock_path(out).name.encode()) <= NAME_MAX
    with output_lock(out):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, folder.name])
    # a shortened temp name left by a killed writer is still recognised as this output's
    with atomic_output(out) as tmp:
        dead = tmp.with_name(tmp.name.replace(f".{os.getpid()}-{HOST_TAG}.", f".{2**22 + 12345}-{HOST_TAG}."))
    dead.write_bytes(b"stale")
    assert remove_stale_temps(out) == [dead]


def test_a_250_character_out_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / ("b" * 247 + ".h5")
    code, stdout, err = run_cli(["synth", "--out", str(out), "--classes", "2", "--per-class", "2"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_an_unwritable_folder_is_named_not_the_temp_name(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    out = tmp_path / "ro" / "s.h5"
    out.parent.mkdir()
    if os.geteuid() != 0:  # a real read-only folder
        out.parent.chmod(0o555)
    else:  # root writes anywhere: the folder refuses through mkstemp as the kernel would
        def refuse(*args: object, prefix: str = "", dir: object = None, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", os.path.join(str(dir), prefix + "abcd1234.tmp"))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        err = cli_error(["synth", "--out", str(out), "--classes", "2", "--per-class", "2"], capsys)
    finally:
        out.parent.chmod(0o755)
    assert err == (f"error: {out}: cannot write here (Permission denied in {out.parent}); expected a folder "
                   "this user can write to"), err
    assert ".tmp" not in err and list(out.parent.iterdir()) == []


def test_sigterm_during_train_says_how_to_resume(toy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(toy), "--config", str(_tiny_config(tmp_path)), "--out", str(run),
            "--epochs", "500", "--cross-epoch", "250", "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 240
        while not (run / "pretrain.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / "pretrain.pt").exists(), proc.stderr.read() if proc.poll() is not None else "slow"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    line = _one_line(stderr)
    assert line.startswith(f"error: {run}: stopped by SIGTERM (epoch "), line
    assert line.endswith(f"{run / 'pretrain.pt'} holds the last saved epoch; resume with --resume"), line
    from training.checkpoint import load_checkpoint

    assert load_checkpoint(run / "pretrain.pt")["epoch"] >= 1  # a whole checkpoint, not a half-written one
    assert not any(p.name.startswith(".") for p in run.iterdir()) and not lock_path(run).exists()


# --------------------------------------------------------------------- item 17: usage errors; item 9


@pytest.mark.parametrize("argv, named", [
    (["train", "--no-such-flag"], "No such option '--no-such-flag'"),
    (["train", "--data", "x.h5", "--out", "r", "--epochs", "many"], "Invalid value for '--epochs'"),
    (["synth"], "Missing option '--out'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_usage_errors_are_one_line_and_exit_1(argv: list[str], named: str,
                                              capsys: pytest.CaptureFixture) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and out == ""
    line = _one_line(err)
    assert line.startswith("error: crossclr") and named in line and line.endswith("--help)"), line


def test_help_still_works(capsys: pytest.CaptureFixture) -> None:
    for argv in (["--help"], ["train", "--help"], [], ["prepare"]):
        code, out, err = run_cli(argv, capsys)
        assert code == 0 and out.startswith("Usage: crossclr") and err == "", argv


def test_worker_counts_beyond_the_machine_are_refused(toy: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from crossclr_infer.hardware import MAX_WORKERS_PER_CORE, usable_cores

    limit = MAX_WORKERS_PER_CORE * usable_cores()
    err = cli_error(["train", "--data", str(toy), "--config", "tiny", "--out", str(tmp_path / "r"),
                     "--num-workers", "100000"], capsys)
    assert err == (f"error: --num-workers 100000: more than this machine can run ({usable_cores()} usable "
                   f"cores); expected 0 to {limit}")
    cfg = tmp_path / "many.toml"
    cfg.write_text("num_workers = 100000\n")
    err = cli_error(["train", "--data", str(toy), "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert err.startswith(f"error: {cfg}: num_workers = 100000: more than this machine can run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.toml"]



def test_a_missing_optional_module_names_the_extra_to_install(tmp_path: Path) -> None:
    """A command whose optional dependency is absent (e.g. plot-metrics without torch in a runtime-only
    install) ends with one line naming the module and the extra, not the catch-all 'this is a bug' line.
    torch is hidden in a fresh interpreter (``sys.modules['torch'] = None`` makes importing it fail)."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 0, "step": 1, "loss": 1.0}\n')
    code = ("import sys; sys.modules['torch'] = None; import cli; "
            f"cli.main(['plot-metrics', {str(metrics)!r}, '--out', {str(tmp_path / 'c.png')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    want = ("error: crossclr plot-metrics: needs torch, which is not installed: install it with pip install "
            "'crossclr[train]'")
    assert r.stderr.strip() == want, r.stderr
    assert not (tmp_path / "c.png").exists()
