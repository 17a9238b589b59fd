"""The ``crossclr`` command line: a Click group whose commands live beside the code they drive.

Each package keeps its commands in a ``commands`` module (``COMMANDS`` and, for the ``prepare`` group,
``PREPARE_COMMANDS``); torch is imported only inside the commands that need it, so ``crossclr predict``
and ``crossclr info`` start without it.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import click

from crossclr_infer import __version__
from crossclr_infer.commands import cache as cache_commands
from crossclr_infer.commands import infer as infer_commands
from crossclr_infer.commands import ntu as ntu_commands
from export import commands as export_commands
from training import commands as train_commands
from training import eval_commands

_MODULES = (ntu_commands, cache_commands, infer_commands, train_commands, eval_commands, export_commands)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crossclr")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("--debug", is_flag=True,
              help="Show the traceback of an error instead of one line (or set CROSSCLR_DEBUG=1).")
def crossclr(verbose: int, debug: bool) -> None:
    """CrosSCLR skeleton action representation learning: prepare, train, evaluate, export, predict."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@crossclr.group()
def prepare() -> None:
    """Turn skeleton data (raw NTU, arrays, official .npy files) into an HDF5 cache."""


for _module in _MODULES:
    for _cmd in getattr(_module, "COMMANDS", []):
        crossclr.add_command(_cmd)
    for _cmd in getattr(_module, "PREPARE_COMMANDS", []):
        prepare.add_command(_cmd)


_DEMO_STEPS = ("synth", "train", "linear", "export", "evaluate", "predict")


def _run_step(args: list[str]) -> None:
    """Run one crossclr command in this process, exactly as a user would type it."""
    click.echo(click.style("$ crossclr " + " ".join(args), bold=True), err=True)
    crossclr.main(args=args, prog_name="crossclr", standalone_mode=False)


@crossclr.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="crossclr-demo",
              show_default=True, help="Folder for everything the demo writes.")
@click.option("--classes", type=click.IntRange(2, 12), default=8, show_default=True)
@click.option("--per-class", type=click.IntRange(10), default=60, show_default=True)
@click.option("--epochs", type=click.IntRange(2), default=30, show_default=True,
              help="Pretraining epochs (the cross-view stage starts halfway).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: str, classes: int, per_class: int, epochs: int, seed: int) -> None:
    """End to end on synthetic data: synth → 3-stream CrosSCLR pretraining (tiny preset, with the
    cross-view stage) → linear evaluation → ONNX export → evaluate → predict one raw sample.

    A few minutes on 2 CPU cores."""
    import json
    import time
    from pathlib import Path

    import numpy as np

    from crossclr_infer.synth import synth_class_names, synthesize_raw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache, run, models = out / "synth.h5", out / "run", out / "models"
    times: dict[str, float] = {}

    def step(name: str, args: list[str]) -> None:
        t0 = time.perf_counter()
        _run_step(args)
        times[name] = time.perf_counter() - t0

    step("synth", ["synth", "--out", str(cache), "--classes", str(classes), "--per-class", str(per_class),
                   "--seed", str(seed)])
    step("train", ["train", "--data", str(cache), "--config", "tiny", "--out", str(run),
                   "--streams", "joint,motion,bone", "--epochs", str(epochs),
                   "--cross-epoch", str(epochs // 2), "--seed", str(seed), "--device", "cpu"])
    step("linear", ["linear", "--data", str(cache), "--checkpoint", str(run / "pretrain.pt"),
                    "--out", str(run / "linear"), "--fusion", "separate", "--epochs", "100",
                    "--device", "cpu", "--json", str(out / "linear.json")])
    step("export", ["export", "--checkpoint", str(run / "linear" / "linear.pt"), "--out", str(models),
                    "--data", str(cache), "--overwrite"])
    step("evaluate", ["evaluate", "--data", str(cache), "--model", str(models / "ensemble.onnx"),
                      "--report", str(out / "report.json"), "--no-progress"])
    # one raw, never-seen sequence in camera coordinates, (M, T, V, C) as a sensor would give it
    seqs, meta = synthesize_raw(classes, 1, seed=seed + 1000)
    raw = np.ascontiguousarray(seqs[0].transpose(3, 1, 2, 0))  # (C, T, V, M) -> (M, T, V, C)
    sample = out / "sample_raw.npy"
    np.save(sample, raw)
    step("predict", ["predict", str(sample), "--model", str(models / "ensemble.onnx"), "--top-k", "3"])

    report = json.loads((out / "report.json").read_text())
    linear = json.loads((out / "linear.json").read_text())
    rows = [
        ("synth", str(cache), f"{classes} classes × {per_class} samples"),
        ("train", str(run / "pretrain.pt"),
         f"{epochs} epochs, joint+motion+bone, cross-view from epoch {epochs // 2}"),
        ("linear", str(run / "linear" / "linear.pt"), _demo_linear_score(linear)),
        ("export", str(models), ", ".join(sorted(p.name for p in models.glob("*.onnx")))),
        ("evaluate", str(out / "report.json"), _demo_eval_score(report)),
        ("predict", str(sample), f"true class: {synth_class_names(classes)[int(meta.label[0])]}"),
    ]
    click.echo("\n| step | output | result | seconds |\n|---|---|---|---|")
    for name, path, result in rows:
        click.echo(f"| {name} | {path} | {result} | {times[name]:.1f} |")


def _demo_linear_score(linear: dict) -> str:
    top1 = linear["last"]["fused"]["top1"]
    return f"fused top-1 {top1:.1f}% (last epoch, val)"


def _demo_eval_score(report: dict) -> str:
    top1, sps = report["results"]["fused"]["top1"], report["run"]["samples_per_s"]
    return f"ONNX fused top-1 {top1:.1f}% (val), {sps:.0f} samples/s"


# parameters of the commands that name their inputs: the one-line report of an unexpected error names them
_INPUT_PARAMS = ("data", "checkpoint", "model", "models", "inputs", "cache", "metrics", "npz", "raw_dir",
                 "folder", "reports", "file", "calibration", "init_from")
_GLOBAL_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "--debug")
_DEBUG_ENV = "CROSSCLR_DEBUG"


def _printable(text: str) -> str:
    """``text`` with control characters escaped (a message may quote names read from files)."""
    from crossclr_infer.errors import printable

    return printable(text)


def _one_line(text: str) -> str:
    """The first non-empty line of ``text``, escaped."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _printable(lines[0]) if lines else ""


def _command_and_inputs(argv: list[str]) -> tuple[str, list[str]]:
    """``crossclr <command>`` as typed, and the inputs it was given (for the report of an unexpected
    error): the command's arguments parsed again without running anything."""
    words = [a for a in argv if a not in _GLOBAL_FLAGS]
    cmd: click.Command = crossclr
    path = ["crossclr"]
    while isinstance(cmd, click.Group) and words and not words[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), words[0])
        if sub is None:
            break
        cmd, path, words = sub, [*path, words[0]], words[1:]
    inputs: list[str] = []
    try:
        ctx = cmd.make_context(path[-1], list(words), resilient_parsing=True)
        for name in _INPUT_PARAMS:
            value = ctx.params.get(name)
            values = value if isinstance(value, (list, tuple)) else [value]
            inputs += [str(v) for v in values if v not in (None, "")]
    except Exception:  # noqa: BLE001 - only a report: without inputs when the arguments do not parse
        pass
    return " ".join(path), inputs


def _unexpected(error: BaseException, argv: list[str]) -> str:
    """One line for an exception that is not a user error: the command, its inputs, what happened."""
    command, inputs = _command_and_inputs(argv)
    where = command + (f" ({', '.join(inputs[:4])}{', ...' if len(inputs) > 4 else ''})" if inputs else "")
    if isinstance(error, RecursionError):
        what = "an input is nested too deeply to read (RecursionError)"
    elif isinstance(error, MemoryError):
        what = "out of memory (MemoryError): an input declares more data than this machine holds"
    else:
        what = f"unexpected {type(error).__name__}" + (f": {_one_line(str(error))}" if str(error).strip()
                                                        else "")
    return (f"error: {_printable(where)}: {what}; this is a bug or an input it does not expect; rerun with "
            f"--debug (or {_DEBUG_ENV}=1) for the traceback")


def _usage_error(error: click.UsageError) -> str:
    """A Click usage error (unknown option, bad value, missing argument) as one line naming the command."""
    cmd = error.ctx.command_path if error.ctx is not None else "crossclr"
    message = " ".join(error.format_message().split())
    return f"error: {_printable(cmd)}: {_printable(message)} (see {_printable(cmd)} --help)"


def _debug(argv: list[str]) -> bool:
    command_at = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    return "--debug" in argv[:command_at] or os.environ.get(_DEBUG_ENV, "") not in ("", "0")


def _raised_in_h5py(error: BaseException) -> bool:
    """Whether ``error`` or an error chained to it was raised inside h5py."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(f"{os.sep}h5py{os.sep}" in frame.filename for frame in traceback.extract_tb(e.__traceback__)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _end_after_write_failure() -> None:
    """Exit 1 without finalizers: HDF5 cannot close a dataset whose cached chunks failed to flush, and closing
    it again at exit crashed the process (see ``crossclr_infer.fileio.WriteFailed``). The cache writer keeps
    no chunk cache, so it no longer gets there (tested in library use); this stays as the guard for any other
    HDF5 write."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


# optional modules -> the extra of pyproject.toml that installs them
MISSING_EXTRAS = {"torch": "train", "onnx": "train", "onnxscript": "train", "matplotlib": "viz",
                  "sklearn": "viz", "onnxruntime": "cpu", "openvino": "openvino"}


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error becomes one line on stderr and a non-zero exit status, never a traceback
    (unless ``--debug`` or ``CROSSCLR_DEBUG=1``). Exit status 1: bad input, a usage error or an unexpected
    error; 130: Ctrl-C; 143: a training run stopped by SIGTERM (resumable)."""
    from crossclr_infer.fileio import WriteFailed

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = crossclr.main(args=args, prog_name="crossclr", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `crossclr` or `crossclr prepare` alone: the help
            click.echo(e.format_message())
            sys.exit(0)
        click.echo(_usage_error(e), err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        sys.exit(1)
    except WriteFailed as e:
        click.echo(f"error: {_one_line(str(e))}", err=True)
        if _raised_in_h5py(e):
            _end_after_write_failure()
        sys.exit(1)
    except (ValueError, OSError) as e:  # CrossclrError, and the library errors about bad values or files
        if _debug(args):
            traceback.print_exc()
        msg = _one_line(str(e)) or type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(getattr(e, "exit_code", 1))
    except ModuleNotFoundError as e:
        if _debug(args):
            traceback.print_exc()
        extra = MISSING_EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            click.echo(_unexpected(e, args), err=True)
        else:
            command, _ = _command_and_inputs(args)
            click.echo(f"error: {_printable(command)}: needs {e.name}, which is not installed: install it "
                       f"with pip install 'crossclr[{extra}]'", err=True)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if _debug(args):
            traceback.print_exc()
        click.echo(_unexpected(e, args), err=True)
        sys.exit(1)
    if isinstance(code, int) and code:  # a command that returned an exit status (ctx.exit)
        sys.exit(code)


if __name__ == "__main__":
    main()
