"""Hostile-user probe of the installed ``crossclr`` CLI (docs/reliability.md).

Builds every bad input, fault and argument itself in a temp folder (hostile HDF5 caches, ONNX models made with
the ``onnx`` library, layout TOML, .npz/.npy/.skeleton/.pkl files, JSON-lines streams, odd paths, bad numbers
and conflicting options), runs ``crossclr`` on each in a subprocess with a timeout and an address-space limit,
and classifies the outcome:

- clean: exit 1 with exactly one ``error:`` line on stderr (WARNING log lines allowed before it), no
  traceback, no escape character, nothing written or overwritten, the secret file's text never shown; or
  exit 0 where the input is actually fine,
- traceback, multi-line, hang (timeout), signal (crash), exit-0-on-bad-input, wrong-exit-code,
  wrote-output (a new file on a refused input), overwritten (an input changed or removed), escape (ESC/BEL
  reached the terminal), secret-leak, code-ran (a pickle's payload ran), catch-all (the entry point's last
  line of defence "unexpected <Exception>... this is a bug": one line, but not a message about the input).

Usage: python benchmarks/probe_hostile.py [--jobs 2] [--only SUBSTRING] [--keep]
Prints the table of unclean cases and the percentage clean. Run time: about 5 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import resource
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

SECRET = "TOPSECRET-7731"
MEM_LIMIT = 6 * 2**30  # RLIMIT_AS of each run (torch + onnxruntime reserve much address space)
TIMEOUT_S = 45.0
TORCH_TIMEOUT_S = 90.0
CROSSCLR = shutil.which("crossclr") or "crossclr"


@dataclass
class Case:
    name: str
    group: str
    setup: Callable[[Path], list[str]]  # builds files in the case folder, returns argv after `crossclr`
    expect: str = "bad"  # bad: clean exit 1; ok: exit 0; either: exit 0 or clean exit 1
    torch: bool = False
    stdin: bytes | None = None


@dataclass
class Outcome:
    case: Case
    kind: str
    rc: int | None
    detail: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


CASES: list[Case] = []
BASE: Path = Path()  # filled in main(): s.h5, run/pretrain.pt, lin/linear.pt, models/*.onnx, good.npy, ...


def simple(name: str, group: str, argv: Callable[[Path], list[str]], **kw) -> None:
    CASES.append(Case(name, group, argv, **kw))


# ----------------------------------------------------------------------------------------------- base
def build_base(base: Path) -> None:
    """One tiny cache, run, linear head and exported models (built once, reused by every case)."""

    def run(*argv: str) -> None:
        r = subprocess.run([CROSSCLR, *argv], cwd=base, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"base build failed: crossclr {' '.join(argv)}\n{r.stderr}")

    run("synth", "--out", "s.h5", "--classes", "3", "--per-class", "6", "--frames", "16")
    run(
        "train",
        "--data",
        "s.h5",
        "--config",
        "tiny",
        "--out",
        "run",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--streams",
        "joint,motion",
        "--cross-epoch",
        "0",
        "--no-progress",
    )
    run(
        "linear",
        "--data",
        "s.h5",
        "--checkpoint",
        "run/pretrain.pt",
        "--out",
        "lin",
        "--epochs",
        "1",
        "--batch-size",
        "4",
    )
    run("export", "--checkpoint", "lin/linear.pt", "--out", "models")
    run(
        "evaluate",
        "--data",
        "s.h5",
        "--model",
        "models/ensemble.onnx",
        "--shard",
        "0/2",
        "--report",
        "r0.json",
        "--no-progress",
    )
    run(
        "evaluate",
        "--data",
        "s.h5",
        "--model",
        "models/ensemble.onnx",
        "--shard",
        "1/2",
        "--report",
        "r1.json",
        "--no-progress",
    )
    rng = np.random.default_rng(0)
    np.save(base / "good.npy", rng.normal(size=(16, 25, 3)).astype(np.float32))
    n = 8
    data = rng.normal(size=(n, 3, 16, 25, 1)).astype(np.float32)
    np.savez(
        base / "good.npz",
        data=data,
        label=np.arange(n) % 2,
        name=np.array([f"s{i}" for i in range(n)]),
        split=np.array(["train"] * 6 + ["val"] * 2),
        class_names=np.array(["a", "b"]),
    )
    (base / "skel").mkdir()
    (base / "skel" / "S001C001P001R001A001.skeleton").write_text(skeleton_text(10))
    for p in base.rglob("*"):
        p.chmod(p.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))


def skeleton_text(frames: int, joints: int = 25, value: str = "0.1") -> str:
    lines = [str(frames)]
    for _ in range(frames):
        lines += ["1", "72057594037931101 0 1 1 1 1 0 -0.4 0.2 2", str(joints)]
        lines += [" ".join([value, value, "2.5"] + ["0"] * 9) for _ in range(joints)]
    return "\n".join(lines) + "\n"


def B(rel: str) -> str:
    return str(BASE / rel)


def evaluate_argv() -> list[str]:
    """``crossclr evaluate`` on the base cache and ensemble model (options follow)."""
    return ["evaluate", "--data", B("s.h5"), "--model", B("models/ensemble.onnx")]


# ------------------------------------------------------------------------------------------ HDF5 caches
def cache_copy(d: Path, edit: Callable[[h5py.File], None], name: str = "c.h5") -> Path:
    path = d / name
    shutil.copy(BASE / "s.h5", path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def set_attr(key: str, value) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        f.attrs[key] = value

    return edit


def del_attr(key: str) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f.attrs[key]

    return edit


def replace_ds(split: str, key: str, value: np.ndarray, **kw) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[split][key]
        f[split].create_dataset(key, data=value, **kw)

    return edit


def edit_ds(split: str, key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        x = fn(f[split][key][()])
        del f[split][key]
        f[split].create_dataset(key, data=x)

    return edit


def layout_attr(mutate: Callable[[dict], None]) -> Callable[[h5py.File], None]:
    import tomli_w
    import tomllib

    def edit(f: h5py.File) -> None:
        t = tomllib.loads(f.attrs["layout"])
        mutate(t)
        f.attrs["layout"] = tomli_w.dumps(t)

    return edit


def cache_case(name: str, edit: Callable[[h5py.File], None], cmd: str = "info", expect: str = "bad") -> None:
    def setup(d: Path) -> list[str]:
        p = cache_copy(d, edit)
        if cmd == "info":
            return ["info", str(p)]
        if cmd == "evaluate":
            return ["evaluate", "--data", str(p), "--model", B("models/ensemble.onnx"), "--no-progress"]
        if cmd == "train":
            return [
                "train",
                "--data",
                str(p),
                "--config",
                "tiny",
                "--out",
                str(d / "out"),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--streams",
                "joint",
                "--no-progress",
            ]
        if cmd == "linear":
            return [
                "linear",
                "--data",
                str(p),
                "--checkpoint",
                B("run/pretrain.pt"),
                "--out",
                str(d / "lin"),
                "--epochs",
                "1",
                "--batch-size",
                "4",
            ]
        if cmd == "knn":
            return ["knn", "--data", str(p), "--checkpoint", B("run/pretrain.pt"), "-k", "1"]
        raise ValueError(cmd)

    CASES.append(
        Case(f"cache {name} [{cmd}]", "hdf5", setup, expect, torch=cmd in ("train", "linear", "knn"))
    )


def register_cache_cases() -> None:
    j = json.dumps
    cache_case("format=other", set_attr("format", "not-a-cache"))
    cache_case("format_version=99", set_attr("format_version", 99))
    cache_case("format_version str", set_attr("format_version", "one"))
    cache_case("frames=-1", set_attr("frames", -1))
    cache_case("frames=2**62", set_attr("frames", 2**62))
    cache_case("frames float nan", set_attr("frames", float("nan")))
    cache_case("frames array", set_attr("frames", np.arange(3)))
    cache_case("num_person=0", set_attr("num_person", 0))
    cache_case("num_person=10**6", set_attr("num_person", 10**6))
    cache_case("num_class=5 vs 3 names", set_attr("num_class", 5))
    cache_case("num_class=-3", set_attr("num_class", -3))
    cache_case("class_names not json", set_attr("class_names", "[waving, clapping"))
    cache_case("class_names dict", set_attr("class_names", j({"a": 1})))
    cache_case("class_names duplicates", set_attr("class_names", j(["a", "a", "b"])), expect="either")
    cache_case("class_names empty string", set_attr("class_names", j(["", "b", "c"])))
    cache_case("class_names ints", set_attr("class_names", j([1, 2, 3])))
    cache_case("class_names ESC", set_attr("class_names", j(["a\x1b]0;pwn\x07", "b", "c"])))
    cache_case("class_names RTL override", set_attr("class_names", j(["a\u202eb", "b", "c"])))
    cache_case(
        "class_names bytes invalid utf8",
        set_attr("class_names", np.bytes_(b'["\xff\xfe", "b", "c"]')),
        expect="either",
    )  # decoded with U+FFFD replacement characters: printable
    cache_case("splits lists missing group", set_attr("splits", j(["train", "val", "test"])))
    cache_case("splits traversal name", set_attr("splits", j(["../train", "val"])))
    cache_case("splits duplicate", set_attr("splits", j(["train", "train"])))
    cache_case("splits empty", set_attr("splits", j([])))
    cache_case("layout garbage toml", set_attr("layout", "joints = [ = ="))
    cache_case("layout missing", del_attr("layout"))
    cache_case("layout deep nesting", set_attr("layout", "a = " + "[" * 3000 + "]" * 3000))
    cache_case("layout cycle", layout_attr(lambda t: t["parents"].__setitem__(20, "neck")))  # root -> neck
    cache_case("layout duplicate joints", layout_attr(lambda t: t["joints"].__setitem__(3, "neck")))
    cache_case("layout center unknown", layout_attr(lambda t: t.__setitem__("center", "tail")))
    cache_case("layout 24 joints vs data 25", layout_attr(lambda t: (t["joints"].pop(), t["parents"].pop())))
    cache_case(
        "layout 2000 joints",
        layout_attr(
            lambda t: (
                t.__setitem__("joints", [f"j{i}" for i in range(2000)]),
                t.__setitem__("parents", ["j0"] + [f"j{i}" for i in range(1999)]),
            )
        ),
    )
    cache_case("layout joint ESC", layout_attr(lambda t: t["joints"].__setitem__(3, "he\x1b[2Jad")))
    cache_case(
        "layout_name ESC (attribute never printed)",
        set_attr("layout_name", "ntu\x1b]0;x\x07"),
        expect="either",
    )
    cache_case("benchmark OSC", set_attr("benchmark", "b\x1b]0;owned\x07"))
    cache_case("benchmark 10 MB", set_attr("benchmark", "b" * 10_000_000))
    cache_case("benchmark C1 CSI", set_attr("benchmark", "b\x9b2J"))
    cache_case("preprocess not json", set_attr("preprocess", "{mode"))
    cache_case("preprocess list", set_attr("preprocess", "[1, 2]"))
    cache_case("preprocess deep nest", set_attr("preprocess", "[" * 5000 + "]" * 5000))
    cache_case("preprocess huge int", set_attr("preprocess", '{"frames": 1' + "0" * 5000 + "}"))
    cache_case("label float", edit_ds("val", "label", lambda x: x.astype(np.float32) + 0.5), "evaluate")
    cache_case("label out of range", edit_ds("val", "label", lambda x: x + 99), "evaluate")
    cache_case("label negative", edit_ds("val", "label", lambda x: x - 5), "evaluate")
    cache_case("label short", edit_ds("val", "label", lambda x: x[:2]), "evaluate")
    cache_case("label 2-D", edit_ds("val", "label", lambda x: x[:, None]), "evaluate")
    cache_case("label string", edit_ds("val", "label", lambda x: x.astype("S3")), "evaluate")
    cache_case("data int8", edit_ds("val", "data", lambda x: x.astype(np.int8)), "evaluate", "either")
    cache_case("data complex", edit_ds("val", "data", lambda x: x.astype(np.complex64)), "evaluate")
    cache_case("data 24 joints", edit_ds("val", "data", lambda x: x[..., :24, :]), "evaluate")
    cache_case("data ndim 3", edit_ds("val", "data", lambda x: x[:, 0, 0]), "evaluate")
    cache_case(
        "data 4 channels", edit_ds("val", "data", lambda x: np.concatenate([x, x[:, :1]], 1)), "evaluate"
    )
    cache_case("data NaN", edit_ds("val", "data", lambda x: np.where(x == x, np.nan, x)), "evaluate")
    cache_case("data inf", edit_ds("val", "data", lambda x: np.full_like(x, np.inf)), "evaluate")
    cache_case("data 1e30", edit_ds("val", "data", lambda x: x + np.float32(1e30)), "evaluate")
    cache_case("data NaN [train]", edit_ds("train", "data", lambda x: x * np.nan), "train")
    cache_case("data big-endian", edit_ds("val", "data", lambda x: x.astype(">f4")), "evaluate", "either")
    cache_case("data float16", edit_ds("val", "data", lambda x: x.astype(np.float16)), "evaluate", "either")
    # lengths are the source clips' frame counts (above `frames` in every cache), never used to read
    cache_case("length > frames", edit_ds("val", "length", lambda x: x + 1000), "evaluate", "either")
    cache_case("length negative", edit_ds("val", "length", lambda x: -x), "evaluate", "either")
    cache_case("name ints", edit_ds("val", "name", lambda x: np.arange(len(x))), "evaluate")
    cache_case(
        "name duplicates",
        edit_ds("val", "name", lambda x: np.array([b"same"] * len(x), dtype=object)),
        "evaluate",
        "either",
    )

    def split_as_dataset(f: h5py.File) -> None:
        del f["val"]
        f["val"] = np.zeros(3)

    cache_case("split is a dataset", split_as_dataset, "evaluate")

    def data_as_group(f: h5py.File) -> None:
        del f["val"]["data"]
        f["val"].create_group("data")

    cache_case("data is a group", data_as_group, "evaluate")

    def extra_group(f: h5py.File) -> None:
        f.create_group("notes").attrs["x"] = "y"

    cache_case("extra group", extra_group, "info", "either")

    def hard_link_loop(f: h5py.File) -> None:
        f["val"]["loop"] = f["val"]

    cache_case("hard link loop", hard_link_loop, "info", "either")

    def soft_link(f: h5py.File) -> None:
        del f["val"]["label"]
        f["val"]["label"] = h5py.SoftLink("/train/label")

    cache_case("soft link label", soft_link, "evaluate")

    def dangling(f: h5py.File) -> None:
        f["val"]["x"] = h5py.SoftLink("/nowhere")

    cache_case("dangling soft link", dangling)

    def ext_link(f: h5py.File) -> None:
        del f["val"]
        f["val"] = h5py.ExternalLink(str(BASE / "s.h5"), "/val")

    cache_case("external link absolute", ext_link, "evaluate")

    def ext_storage(f: h5py.File) -> None:
        secret = Path(f.filename).parent.parent / "secret.txt"
        del f["val"]["name"]
        f["val"].create_dataset("name", shape=(6,), dtype="S8", external=[(str(secret), 0, 48)])

    cache_case("external storage secret", ext_storage, "evaluate")

    def vds(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(6,), dtype="i8")
        layout[:] = h5py.VirtualSource(str(BASE / "s.h5"), "/val/label", shape=(6,))
        del f["val"]["label"]
        f["val"].create_virtual_dataset("label", layout)

    cache_case("virtual dataset", vds, "evaluate")

    def huge_declared(f: h5py.File) -> None:
        del f["val"]["data"]
        f["val"].create_dataset("data", shape=(10**9, 3, 16, 25, 2), dtype="f4", chunks=(1, 3, 16, 25, 2))

    cache_case("data declares 1e9 samples", huge_declared, "evaluate")

    def unwritten(f: h5py.File) -> None:
        del f["val"]["data"]
        f["val"].create_dataset(
            "data", shape=(6, 3, 16, 25, 2), dtype="f4", chunks=(1, 3, 16, 25, 2), fillvalue=np.nan
        )

    cache_case("data never written (NaN fill)", unwritten, "evaluate")

    def lzf(f: h5py.File) -> None:
        x = f["val"]["data"][()]
        del f["val"]["data"]
        f["val"].create_dataset("data", data=x, chunks=(1, 3, 16, 25, 2), compression="lzf")

    cache_case("lzf compression", lzf, "evaluate", "either")

    def empty_val(f: h5py.File) -> None:
        for k in ("data", "label", "name", "length"):
            x = f["val"][k][()][:0]
            del f["val"][k]
            f["val"].create_dataset(k, data=x, maxshape=(None, *x.shape[1:]))

    cache_case("val split empty", empty_val, "evaluate")

    def label_attr_ds(f: h5py.File) -> None:
        f["val"]["label"].attrs["x"] = "a" * 100

    cache_case("dataset attribute extra", label_attr_ds, "info", "either")
    cache_case("label out of range [linear]", edit_ds("train", "label", lambda x: x + 50), "linear")
    cache_case("num_class=2 vs labels [knn]", set_attr("num_class", 2), "knn")

    # whole-file faults
    def raw_file(content: bytes | None, name: str = "c.h5") -> Callable[[Path], list[str]]:
        def setup(d: Path) -> list[str]:
            p = d / name
            if content is None:
                p.write_bytes(b"")
            else:
                p.write_bytes(content)
            return ["info", str(p)]

        return setup

    simple("cache zero bytes", "hdf5", raw_file(b""))
    simple("cache random bytes", "hdf5", raw_file(os.urandom(4096)))
    simple("cache only HDF5 signature", "hdf5", raw_file(b"\x89HDF\r\n\x1a\n" + b"\0" * 100))
    simple("cache truncated half", "hdf5", lambda d: raw_file((BASE / "s.h5").read_bytes()[:60000])(d))

    def empty_h5(d: Path) -> list[str]:
        h5py.File(d / "e.h5", "w").close()
        return ["info", str(d / "e.h5")]

    simple("cache empty HDF5 (no attrs)", "hdf5", empty_h5)


# ---------------------------------------------------------------------------------------------- paths
def register_path_cases() -> None:
    simple("info on a directory", "paths", lambda d: ["info", str(d)])
    simple("info nonexistent", "paths", lambda d: ["info", str(d / "nope.h5")])

    def link_secret(d: Path) -> list[str]:
        (d / "c.h5").symlink_to(d.parent / "secret.txt")
        return ["info", str(d / "c.h5")]

    simple("cache symlink to secret text", "paths", link_secret)

    def link_loop(d: Path) -> list[str]:
        (d / "a.h5").symlink_to(d / "b.h5")
        (d / "b.h5").symlink_to(d / "a.h5")
        return ["info", str(d / "a.h5")]

    simple("cache symlink loop", "paths", link_loop)

    def dev_zero(d: Path) -> list[str]:
        return ["info", "/dev/zero"]

    simple("cache /dev/zero", "paths", dev_zero)

    def ctrl_name(d: Path) -> list[str]:
        p = d / "ca\x1b]0;t\x07che\n.h5"
        shutil.copy(BASE / "s.h5", p)
        return ["info", str(p)]

    simple("valid cache, name with ESC/BEL/newline", "paths", ctrl_name, expect="ok")

    def ctrl_name_bad(d: Path) -> list[str]:
        p = d / "bad\x1b[31m\x07.h5"
        p.write_bytes(b"junk")
        return ["info", str(p)]

    simple("bad cache, name with ESC/BEL", "paths", ctrl_name_bad)

    def long_name(d: Path) -> list[str]:
        p = d / ("c" * 250 + ".h5")
        shutil.copy(BASE / "s.h5", p)
        return ["info", str(p)]

    simple("valid cache, 253-char name", "paths", long_name, expect="ok")

    def too_long(d: Path) -> list[str]:
        return ["info", str(d / ("c" * 300 + ".h5"))]

    simple("cache name 303 chars (ENAMETOOLONG)", "paths", too_long)

    def npy_dir(d: Path) -> list[str]:
        (d / "x.npy").mkdir()
        return ["predict", "--model", B("models/ensemble.onnx"), str(d / "x.npy")]

    simple("predict: directory named x.npy", "paths", npy_dir, expect="either")

    def model_dir(d: Path) -> list[str]:
        (d / "m.onnx").mkdir()
        return ["predict", "--model", str(d / "m.onnx"), B("good.npy")]

    simple("predict: --model a directory", "paths", model_dir)

    def model_secret(d: Path) -> list[str]:
        (d / "m.onnx").symlink_to(d.parent / "secret.txt")
        return ["predict", "--model", str(d / "m.onnx"), B("good.npy")]

    simple("predict: --model symlink to secret", "paths", model_secret)

    def folder_fifo(d: Path) -> list[str]:
        (d / "in").mkdir()
        shutil.copy(BASE / "good.npy", d / "in" / "a.npy")
        os.mkfifo(d / "in" / "b.npy")
        return ["predict", "--model", B("models/ensemble.onnx"), str(d / "in")]

    simple("predict: folder holding a FIFO .npy", "paths", folder_fifo, expect="either")

    def folder_loop(d: Path) -> list[str]:
        (d / "in").mkdir()
        shutil.copy(BASE / "good.npy", d / "in" / "a.npy")
        (d / "in" / "loop").symlink_to(d / "in")
        return ["predict", "--model", B("models/ensemble.onnx"), str(d / "in")]

    simple("predict: folder with a symlink loop", "paths", folder_loop, expect="either")

    # the probe runs as root, for whom chmod 555 protects nothing: /sys refuses new files even to root
    simple(
        "synth --out in an unwritable folder (/sys)",
        "paths",
        lambda d: ["synth", "--out", "/sys/s.h5", "--classes", "2", "--per-class", "2", "--frames", "4"],
    )
    simple(
        "evaluate --report in an unwritable folder (/sys)",
        "paths",
        lambda d: [
            *evaluate_argv(),
            "--report",
            "/sys/r.json",
            "--no-progress",
        ],
    )
    simple(
        "export --out in an unwritable folder (/sys)",
        "paths",
        lambda d: ["export", "--checkpoint", B("lin/linear.pt"), "--out", "/sys/m"],
        torch=True,
    )

    def out_device(d: Path) -> list[str]:  # a copy of /dev/full made here: never the machine's own
        os.mknod(d / "full", 0o666 | stat.S_IFCHR, os.makedev(1, 7))
        return ["synth", "--out", str(d / "full"), "--classes", "2", "--per-class", "2", "--frames", "4"]

    simple("synth --out a character device", "paths", out_device)

    def out_fifo(d: Path) -> list[str]:
        os.mkfifo(d / "o.json")
        return [
            *evaluate_argv(),
            "--report",
            str(d / "o.json"),
            "--no-progress",
        ]

    simple("evaluate --report a FIFO", "paths", out_fifo)

    def export_out_device(d: Path) -> list[str]:
        os.mknod(d / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return ["export", "--checkpoint", B("lin/linear.pt"), "--out", str(d / "null"), "--overwrite"]

    simple("export --out a character device --overwrite", "paths", export_out_device, torch=True)

    def out_existing_dir(d: Path) -> list[str]:
        (d / "o.h5").mkdir()
        (d / "o.h5" / "keep").write_text("x")
        return ["synth", "--out", str(d / "o.h5"), "--classes", "2", "--per-class", "2", "--frames", "4"]

    simple("synth --out an existing folder", "paths", out_existing_dir)

    def out_through_file(d: Path) -> list[str]:
        (d / "f").write_text("x")
        return [
            "synth",
            "--out",
            str(d / "f" / "s.h5"),
            "--classes",
            "2",
            "--per-class",
            "2",
            "--frames",
            "4",
        ]

    simple("synth --out under a regular file", "paths", out_through_file)

    def out_symlink_input(d: Path) -> list[str]:
        shutil.copy(BASE / "good.npz", d / "in.npz")
        (d / "o.h5").symlink_to(d / "in.npz")
        return ["prepare", "arrays", str(d / "in.npz"), "--layout", "ntu-rgb+d", "--out", str(d / "o.h5")]

    simple("prepare arrays --out symlink to the input", "paths", out_symlink_input)

    def out_hardlink_input(d: Path) -> list[str]:
        shutil.copy(BASE / "good.npz", d / "in.npz")
        os.link(d / "in.npz", d / "o.h5")
        return ["prepare", "arrays", str(d / "in.npz"), "--layout", "ntu-rgb+d", "--out", str(d / "o.h5")]

    simple("prepare arrays --out hard link to the input", "paths", out_hardlink_input)

    def report_symlink_cache(d: Path) -> list[str]:
        shutil.copy(BASE / "s.h5", d / "c.h5")
        (d / "r.json").symlink_to(d / "c.h5")
        return [
            "evaluate",
            "--data",
            str(d / "c.h5"),
            "--model",
            B("models/ensemble.onnx"),
            "--report",
            str(d / "r.json"),
            "--no-progress",
        ]

    simple("evaluate --report symlink to the cache", "paths", report_symlink_cache)

    def plots_is_file(d: Path) -> list[str]:
        (d / "p").write_text("keep")
        return [
            *evaluate_argv(),
            "--plots",
            str(d / "p"),
            "--no-progress",
        ]

    simple("evaluate --plots a regular file", "paths", plots_is_file)

    def merge_out_is_input(d: Path) -> list[str]:
        shutil.copy(BASE / "r0.json", d / "a.json")
        shutil.copy(BASE / "r1.json", d / "b.json")
        return ["merge-reports", str(d / "a.json"), str(d / "b.json"), "--out", str(d / "b.json")]

    simple("merge-reports --out = an input", "paths", merge_out_is_input)

    def merge_out_symlink(d: Path) -> list[str]:
        shutil.copy(BASE / "r0.json", d / "a.json")
        shutil.copy(BASE / "r1.json", d / "b.json")
        (d / "o.json").symlink_to(d / "a.json")
        return ["merge-reports", str(d / "a.json"), str(d / "b.json"), "--out", str(d / "o.json")]

    simple("merge-reports --out symlink to an input", "paths", merge_out_symlink)

    def export_out_file(d: Path) -> list[str]:
        (d / "m").write_text("keep")
        return ["export", "--checkpoint", B("lin/linear.pt"), "--out", str(d / "m")]

    simple("export --out an existing regular file", "paths", export_out_file, torch=True)

    def export_out_holds_ckpt(d: Path) -> list[str]:
        shutil.copytree(BASE / "lin", d / "lin")
        return ["export", "--checkpoint", str(d / "lin" / "linear.pt"), "--out", str(d), "--overwrite"]

    simple("export --out parent of the checkpoint --overwrite", "paths", export_out_holds_ckpt, torch=True)

    def train_out_is_data(d: Path) -> list[str]:
        shutil.copy(BASE / "s.h5", d / "c.h5")
        return [
            "train",
            "--data",
            str(d / "c.h5"),
            "--config",
            "tiny",
            "--out",
            str(d),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--streams",
            "joint",
            "--no-progress",
        ]

    simple("train --out folder holding --data", "paths", train_out_is_data, torch=True)

    def plot_out_symlink(d: Path) -> list[str]:
        shutil.copy(BASE / "run" / "metrics.jsonl", d / "m.jsonl")
        (d / "o.png").symlink_to(d / "m.jsonl")
        return ["plot-metrics", str(d / "m.jsonl"), "--out", str(d / "o.png")]

    simple("plot-metrics --out symlink to the metrics", "paths", plot_out_symlink, torch=True)

    def knn_json_symlink(d: Path) -> list[str]:
        shutil.copy(BASE / "run" / "pretrain.pt", d / "p.pt")
        (d / "k.json").symlink_to(d / "p.pt")
        return [
            "knn",
            "--data",
            B("s.h5"),
            "--checkpoint",
            str(d / "p.pt"),
            "-k",
            "1",
            "--json",
            str(d / "k.json"),
        ]

    simple("knn --json symlink to the checkpoint", "paths", knn_json_symlink, torch=True)


# --------------------------------------------------------------------------------------------- layouts
def layout_case(name: str, text: str | bytes, expect: str = "bad") -> None:
    def setup(d: Path) -> list[str]:
        p = d / "l.toml"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["prepare", "arrays", B("good.npz"), "--layout", str(p), "--out", str(d / "o.h5")]

    CASES.append(Case(f"layout {name}", "layout", setup, expect))


def register_layout_cases() -> None:
    import tomli_w
    import tomllib

    ntu = tomllib.loads(h5py.File(BASE / "s.h5", "r").attrs["layout"])

    def mutated(fn: Callable[[dict], object]) -> str:
        t = json.loads(json.dumps(ntu))
        fn(t)
        return tomli_w.dumps(t)

    layout_case("syntax error", "joints = [\n")
    layout_case("invalid utf-8", b'name = "\xff\xfe"\n')
    layout_case("binary garbage", os.urandom(2000))
    layout_case("empty file", "")
    layout_case(
        "joints empty", mutated(lambda t: (t.__setitem__("joints", []), t.__setitem__("parents", [])))
    )
    layout_case("joints a string", mutated(lambda t: t.__setitem__("joints", "abc")))
    layout_case("parents too short", mutated(lambda t: t["parents"].pop()))
    layout_case("parent unknown", mutated(lambda t: t["parents"].__setitem__(4, "tail")))
    layout_case("two-joint cycle", mutated(lambda t: t["parents"].__setitem__(20, "neck")))
    layout_case("duplicate joint", mutated(lambda t: t["joints"].__setitem__(5, "neck")))
    layout_case("joint name 10k chars", mutated(lambda t: t["joints"].__setitem__(3, "h" * 10_000)))
    layout_case("joint name RTL override", mutated(lambda t: t["joints"].__setitem__(3, "he\u202ead")))
    layout_case("joint name NUL", mutated(lambda t: t["joints"].__setitem__(3, "he\x00ad")))
    layout_case("shoulders wrong count", mutated(lambda t: t.__setitem__("shoulders", ["neck"])))
    layout_case("center int", mutated(lambda t: t.__setitem__("center", 3)))
    layout_case("name traversal", mutated(lambda t: t.__setitem__("name", "../../etc/passwd")), "either")
    layout_case("unknown key", mutated(lambda t: t.__setitem__("colour", "red")), "either")
    layout_case("deep nesting", "x = " + "[" * 3000 + "]" * 3000)
    layout_case("10 MB comment", "#" + "x" * 10_000_000 + "\n" + mutated(lambda t: None), "either")

    def layout_is_dir(d: Path) -> list[str]:
        (d / "l.toml").mkdir()
        return ["prepare", "arrays", B("good.npz"), "--layout", str(d / "l.toml"), "--out", str(d / "o.h5")]

    simple("layout is a directory", "layout", layout_is_dir)

    def layout_passwd(d: Path) -> list[str]:
        (d / "l.toml").symlink_to(d.parent / "secret.txt")
        return ["prepare", "arrays", B("good.npz"), "--layout", str(d / "l.toml"), "--out", str(d / "o.h5")]

    simple("layout symlink to secret", "layout", layout_passwd)
    simple(
        "layout unknown builtin name",
        "layout",
        lambda d: ["prepare", "arrays", B("good.npz"), "--layout", "ntu\x1b[2J", "--out", str(d / "o.h5")],
    )


# ------------------------------------------------------------------------------------------------- npz
def npz_case(
    name: str, arrays: dict | Callable[[Path], Path], expect: str = "bad", extra: tuple = ()
) -> None:
    def setup(d: Path) -> list[str]:
        if callable(arrays):
            p = arrays(d)
        else:
            p = d / "in.npz"
            np.savez(p, **arrays)
        return ["prepare", "arrays", str(p), "--layout", "ntu-rgb+d", "--out", str(d / "o.h5"), *extra]

    CASES.append(Case(f"npz {name}", "npz", setup, expect))


def register_npz_cases() -> None:
    rng = np.random.default_rng(1)
    n = 8
    data = rng.normal(size=(n, 3, 16, 25, 1)).astype(np.float32)
    good = dict(
        data=data,
        label=np.arange(n) % 2,
        name=np.array([f"s{i}" for i in range(n)]),
        split=np.array(["train"] * 6 + ["val"] * 2),
        class_names=np.array(["a", "b"]),
    )

    def w(**kw):
        x = dict(good)
        for k, v in kw.items():
            if v is None:
                x.pop(k)
            else:
                x[k] = v
        return x

    npz_case("not a zip", lambda d: (d / "in.npz").write_bytes(b"junk" * 10) and d / "in.npz")
    npz_case("empty zip", lambda d: (zipfile.ZipFile(d / "in.npz", "w").close(), d / "in.npz")[1])
    ragged = np.empty(n, dtype=object)
    for i in range(n):
        ragged[i] = data[i][:, : 5 + i]
    npz_case("data object array (pickle)", w(data=ragged), "either")
    npz_case("data key missing", w(data=None))
    npz_case("label key missing", w(label=None))
    npz_case("data ndim 2", w(data=data[:, 0, 0]))
    npz_case("data NaN", w(data=data * np.nan))
    npz_case("data 1e30", w(data=data + np.float32(1e30)))
    npz_case(
        "data inf one sample", w(data=np.where(np.arange(n)[:, None, None, None, None] == 3, np.inf, data))
    )
    npz_case("label negative", w(label=-np.ones(n, int)))
    npz_case("label float", w(label=np.arange(n) / 3))
    npz_case("label count mismatch", w(label=np.arange(3)))
    npz_case("label >= class count", w(label=np.arange(n) + 7))
    npz_case("label 2**62", w(label=np.full(n, 2**62)))
    npz_case("split unknown values", w(split=np.array(["tr\x1bain"] * n)))
    npz_case("class_names count < labels", w(class_names=np.array(["a"])))
    npz_case("class_names ESC", w(class_names=np.array(["a\x1b]0;x\x07", "b"])))
    npz_case("names duplicated", w(name=np.array(["s"] * n)), "either")
    npz_case("name with newline", w(name=np.array([f"s\n{i}" for i in range(n)])), "either")
    npz_case("data 24 joints", w(data=data[..., :24, :]))
    npz_case("data 0 frames", w(data=data[:, :, :0]))
    npz_case(
        "data 0 samples",
        w(data=data[:0], label=np.arange(0), name=np.array([], str), split=np.array([], str)),
    )
    npz_case("data complex", w(data=data.astype(np.complex64)))
    npz_case("data strings", w(data=np.array(["x"] * n)))

    def forged_header(d: Path) -> Path:
        p = d / "in.npz"
        with zipfile.ZipFile(p, "w") as z:
            hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 3, 16, 25, 1), }"
            hdr = hdr.ljust(117) + "\n"
            z.writestr(
                "data.npy", b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + b"\0" * 64
            )
            for k in ("label", "name", "split", "class_names"):
                with z.open(f"{k}.npy", "w") as f:
                    np.lib.format.write_array(f, good[k])
        return p

    npz_case("forged huge npy header inside npz", forged_header)

    def zip_bomb(d: Path) -> Path:
        p = d / "in.npz"
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            with z.open("data.npy", "w", force_zip64=True) as f:
                big = np.zeros((1, 3, 16, 25, 1), np.float32)
                hdr = {"descr": "<f4", "fortran_order": False, "shape": (400000, 3, 300, 25, 1)}
                np.lib.format.write_array_header_1_0(f, hdr)
                chunk = np.zeros(2**24, np.uint8).tobytes()
                for _ in range(
                    int(400000 * 3 * 300 * 25 * 4 / len(chunk)) // 200
                ):  # 180 MB of the 36 GB declared
                    f.write(chunk)
                del big
            for k in ("label", "name", "split", "class_names"):
                with z.open(f"{k}.npy", "w") as f:
                    np.lib.format.write_array(f, good[k])
        return p

    npz_case("deflate bomb (36 GB declared, 180 MB inflated)", zip_bomb)
    npz_case("member traversal name ../x.npy", lambda d: _traversal_npz(d, good), "either")
    simple(
        "prepare arrays --frames 10**9",
        "npz",
        lambda d: [
            "prepare",
            "arrays",
            B("good.npz"),
            "--layout",
            "ntu-rgb+d",
            "--out",
            str(d / "o.h5"),
            "--preprocess",
            "official",
            "--frames",
            str(10**9),
        ],
    )
    simple(
        "prepare arrays --benchmark ESC",
        "npz",
        lambda d: [
            "prepare",
            "arrays",
            B("good.npz"),
            "--layout",
            "ntu-rgb+d",
            "--out",
            str(d / "o.h5"),
            "--benchmark",
            "b\x1b]0;x\x07",
        ],
    )
    simple(
        "prepare arrays --benchmark 10k chars",
        "npz",
        lambda d: [
            "prepare",
            "arrays",
            B("good.npz"),
            "--layout",
            "ntu-rgb+d",
            "--out",
            str(d / "o.h5"),
            "--benchmark",
            "b" * 10_000,
        ],
    )
    simple(
        "prepare arrays --preprocess pose2d on 3-D data",
        "npz",
        lambda d: [  # (x, y, z) reads as (x, y, s)
            "prepare",
            "arrays",
            B("good.npz"),
            "--layout",
            "ntu-rgb+d",
            "--out",
            str(d / "o.h5"),
            "--preprocess",
            "pose2d",
        ],
        expect="either",
    )
    simple(
        "prepare arrays valid, --out with newline in name",
        "npz",
        lambda d: ["prepare", "arrays", B("good.npz"), "--layout", "ntu-rgb+d", "--out", str(d / "o\n.h5")],
        expect="ok",
    )


def _traversal_npz(d: Path, good: dict) -> Path:
    p = d / "in.npz"
    with zipfile.ZipFile(p, "w") as z:
        for k, v in good.items():
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, v)
        z.writestr("../escaped.npy", b"x")
    return p


# -------------------------------------------------------------------------------------- official + pkl
class _Pwn:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def official_case(name: str, build: Callable[[Path], None], expect: str = "bad") -> None:
    def setup(d: Path) -> list[str]:
        (d / "off").mkdir()
        build(d / "off")
        return ["prepare", "official", str(d / "off"), "--out", str(d / "o.h5")]

    CASES.append(Case(f"official {name}", "official", setup, expect))


def register_official_cases() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 16, 25, 2)).astype(np.float32)

    def good(folder: Path, data=x, labels=None, names=None, split=("train", "val")) -> None:
        for s in split:
            np.save(folder / f"{s}_data.npy", data)
            lab = list(range(len(data))) if labels is None else labels
            nm = [f"S001C001P001R001A00{i}" for i in range(len(data))] if names is None else names
            with open(folder / f"{s}_label.pkl", "wb") as f:
                pickle.dump((nm, lab), f)

    official_case(
        "pickle payload in label",
        lambda f: (good(f), (f / "train_label.pkl").write_bytes(pickle.dumps(_Pwn(str(f.parent / "PWNED"))))),
    )
    official_case(
        "data object array",
        lambda f: (good(f), np.save(f / "train_data.npy", np.array([1, "a"], dtype=object))),
    )
    official_case(
        "label pkl truncated",
        lambda f: (good(f), (f / "val_label.pkl").write_bytes((f / "val_label.pkl").read_bytes()[:20])),
    )
    official_case(
        "label pkl a dict", lambda f: (good(f), (f / "val_label.pkl").write_bytes(pickle.dumps({"a": 1})))
    )
    official_case("label count mismatch", lambda f: good(f, labels=[0, 1]))
    official_case("labels negative", lambda f: good(f, labels=[-1, -2, -3, -4]))
    official_case("labels strings", lambda f: good(f, labels=["a", "b", "c", "d"]))
    official_case("names with ESC", lambda f: good(f, names=["a\x1b[2J"] * 4))
    official_case("data 3-D", lambda f: good(f, data=x[:, 0]))
    official_case("data NaN", lambda f: good(f, data=x * np.nan))
    official_case("folder empty", lambda f: None)
    official_case("only train files", lambda f: good(f, split=("train",)), "either")

    def forged(f: Path) -> None:
        good(f)
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (10000000000, 3, 300, 25, 2), }".ljust(117)
        (f / "val_data.npy").write_bytes(
            b"\x93NUMPY\x01\x00" + (len(hdr) + 1).to_bytes(2, "little") + hdr.encode() + b"\n" + b"\0" * 64
        )

    official_case("forged huge npy header", forged)

    def data_dir(f: Path) -> None:
        good(f)
        (f / "val_data.npy").unlink()
        (f / "val_data.npy").mkdir()

    official_case("val_data.npy a directory", data_dir)
    simple(
        "official: FOLDER is a file",
        "official",
        lambda d: ["prepare", "official", B("good.npy"), "--out", str(d / "o.h5")],
    )


# ------------------------------------------------------------------------------------------------- ntu
def ntu_case(name: str, files: dict[str, str | bytes], expect: str = "bad", extra: tuple = ()) -> None:
    """One bad file beside a good one is skipped and counted (prepare ntu's documented rule): either."""
    if len(files) > 1 and any(v == skeleton_text(10) for v in files.values()) and not extra:
        expect = "either"

    def setup(d: Path) -> list[str]:
        raw = d / "raw"
        raw.mkdir()
        for k, v in files.items():
            (raw / k).write_bytes(v if isinstance(v, bytes) else v.encode())
        return [
            "prepare",
            "ntu",
            str(raw),
            "--benchmark",
            "ntu60-xsub",
            "--out",
            str(d / "o.h5"),
            "--no-progress",
            *extra,
        ]

    CASES.append(Case(f"ntu {name}", "ntu", setup, expect))


def register_ntu_cases() -> None:
    f1, f2 = "S001C001P001R001A001.skeleton", "S001C001P002R001A002.skeleton"
    good = skeleton_text(10)
    ntu_case("non-numeric frame count", {f1: "ten\n" + good[3:], f2: good})
    ntu_case("body count 999999999", {f1: "10\n999999999\n" + good.split("\n", 2)[2], f2: good})
    ntu_case("joint count 2**40", {f1: good.replace("\n25\n", f"\n{2**40}\n", 1), f2: good})
    ntu_case("frame count -5", {f1: "-5\n" + good.split("\n", 1)[1], f2: good})
    ntu_case("frame count 10**12", {f1: f"{10**12}\n" + good.split("\n", 1)[1], f2: good})
    ntu_case("binary garbage", {f1: os.urandom(5000), f2: good})
    ntu_case("NaN coordinates", {f1: skeleton_text(10, value="nan"), f2: skeleton_text(10, value="nan")})
    ntu_case("1e30 coordinates", {f1: skeleton_text(10, value="1e30"), f2: skeleton_text(10, value="1e30")})
    ntu_case("empty files", {f1: "", f2: ""})
    ntu_case("no skeleton files", {"readme.txt": "x"})
    ntu_case("name with ESC", {"S001C001P001R001A001\x1b[2J.skeleton": good}, "either")
    ntu_case("--ignore-list a directory", {f1: good, f2: good}, extra=("--ignore-list", "/tmp"))
    ntu_case("--workers 100000", {f1: good, f2: good}, extra=("--workers", "100000"))

    def skel_dir(d: Path) -> list[str]:
        raw = d / "raw"
        raw.mkdir()
        (raw / f1).mkdir()
        (raw / f2).write_text(good)
        return [
            "prepare",
            "ntu",
            str(raw),
            "--benchmark",
            "ntu60-xsub",
            "--out",
            str(d / "o.h5"),
            "--no-progress",
        ]

    simple("ntu .skeleton that is a directory", "ntu", skel_dir, expect="either")

    def skel_secret(d: Path) -> list[str]:
        raw = d / "raw"
        raw.mkdir()
        (raw / f1).symlink_to(d.parent / "secret.txt")
        (raw / f2).write_text(good)
        return [
            "prepare",
            "ntu",
            str(raw),
            "--benchmark",
            "ntu60-xsub",
            "--out",
            str(d / "o.h5"),
            "--no-progress",
        ]

    simple("ntu .skeleton symlink to secret", "ntu", skel_secret, expect="either")


# -------------------------------------------------------------------------------------------- predict
def npy_case(name: str, make: Callable[[Path], Path], expect: str = "bad", extra: tuple = ()) -> None:
    def setup(d: Path) -> list[str]:
        return ["predict", "--model", B("models/ensemble.onnx"), str(make(d)), *extra]

    CASES.append(Case(f"predict npy {name}", "predict", setup, expect))


def saved(arr: np.ndarray, **kw) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        np.save(d / "x.npy", arr, **kw)
        return d / "x.npy"

    return make


def register_predict_cases() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 25, 3)).astype(np.float32)
    npy_case("object dtype (pickle)", saved(np.array([x, 1], dtype=object), allow_pickle=True))
    npy_case("fortran order", saved(np.asfortranarray(x)), "ok")
    npy_case("0-d", saved(np.float32(3)))
    npy_case("6-D", saved(x[None, None, None]))
    npy_case("NaN", saved(x * np.nan))
    npy_case("complex", saved(x.astype(np.complex64)))
    npy_case("bool", saved(x > 0))
    npy_case("float16", saved(x.astype(np.float16)), "either")
    npy_case("int64", saved((x * 100).astype(np.int64)), "either")
    npy_case("one frame", saved(x[:1]), "either")
    npy_case("zero frames", saved(x[:0]))
    npy_case("100k frames", saved(np.tile(x, (6250, 1, 1))), "either")
    npy_case("24 joints", saved(x[:, :24]))
    npy_case("string array", saved(np.array(["a", "b"])))

    def forged(d: Path) -> Path:
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 25, 3), }".ljust(117) + "\n"
        (d / "x.npy").write_bytes(
            b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + b"\0" * 300
        )
        return d / "x.npy"

    npy_case("forged huge header", forged)

    def header_v3_bad(d: Path) -> Path:
        (d / "x.npy").write_bytes(b"\x93NUMPY\x03\x00" + (10**6).to_bytes(4, "little") + b"{" * 100)
        return d / "x.npy"

    npy_case("v3 header, length 1e6, truncated", header_v3_bad)

    def ctrl_name(d: Path) -> Path:
        p = d / "x\x1b]0;t\x07.npy"
        np.save(p, x * np.nan)
        return p

    npy_case("bad data, file name with OSC", ctrl_name)
    npy_case("--axes XYZ", saved(x), extra=("--axes", "XYZ"))
    npy_case("--axes TTV", saved(x), extra=("--axes", "TTV"))
    npy_case("--axes ESC", saved(x), extra=("--axes", "T\x1bVC"))
    npy_case("--preprocessed wrong shape", saved(x), extra=("--preprocessed",))
    for k in ("0", "-1", str(10**30), "2.5"):
        npy_case(
            f"--top-k {k}", saved(x), "either" if k in ("0", str(10**30)) else "bad", extra=("--top-k", k)
        )
    for t in ("-1", "100000", str(2**63)):  # the issue allows a clamp with a warning
        npy_case(f"--threads {t}", saved(x), "bad" if t == "-1" else "either", extra=("--threads", t))
    npy_case("--providers bogus", saved(x), extra=("--providers", "bogus\x1b"))
    npy_case("--precision bf16 on a CNN", saved(x), "either", extra=("--precision", "bf16"))

    def skel(text: str | bytes) -> Callable[[Path], Path]:
        def make(d: Path) -> Path:
            p = d / "S001C001P001R001A001.skeleton"
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            return p

        return make

    npy_case("skeleton garbage", skel(os.urandom(3000)))
    npy_case("skeleton 2**40 joints", skel(skeleton_text(3).replace("\n25\n", f"\n{2**40}\n", 1)))
    npy_case("skeleton inf coords", skel(skeleton_text(5, value="inf")))
    simple("predict: no inputs", "predict", lambda d: ["predict", "--model", B("models/ensemble.onnx")])
    simple(
        "predict --emit-frames without --replay",
        "predict",
        lambda d: ["predict", "--model", B("models/ensemble.onnx"), "--emit-frames", B("good.npy")],
    )
    simple(
        "predict --stream with --replay",
        "predict",
        lambda d: ["predict", "--model", B("models/ensemble.onnx"), "--stream", "--replay", B("good.npy")],
    )
    simple(
        "predict --window with --span",
        "predict",
        lambda d: [
            "predict",
            "--model",
            B("models/ensemble.onnx"),
            "--replay",
            B("good.npy"),
            "--no-wait",
            "--window",
            "16",
            "--span",
            "1",
        ],
    )


# ---------------------------------------------------------------------------------------------- ONNX
def onnx_case(
    name: str, edit: Callable, cmd: str = "predict", expect: str = "bad", src: str = "joint"
) -> None:
    def setup(d: Path) -> list[str]:
        import onnx

        m = onnx.load(BASE / "models" / f"{src}.onnx")
        p = d / "m.onnx"
        r = edit(m, d)
        if r is not None:
            m = r
        if isinstance(m, bytes):
            p.write_bytes(m)
        else:
            onnx.save(m, p)
        if cmd == "predict":
            return ["predict", "--model", str(p), B("good.npy")]
        return ["evaluate", "--data", B("s.h5"), "--model", str(p), "--no-progress"]

    CASES.append(Case(f"onnx {name} [{cmd}]", "onnx", setup, expect))


def meta(key: str, value: str | None) -> Callable:
    def edit(m, d):
        props = {p.key: p.value for p in m.metadata_props}
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
        del m.metadata_props[:]
        for k, v in props.items():
            m.metadata_props.add(key=k, value=v)

    return edit


def register_onnx_cases() -> None:
    import onnx
    from onnx import helper

    onnx_case("crossclr_format missing", meta("crossclr_format", None))
    onnx_case("class_names not json", meta("class_names", "[a, b"))
    onnx_case("class_names 5 vs 3 logits", meta("class_names", json.dumps(list("abcde"))))
    onnx_case("class_names OSC", meta("class_names", json.dumps(["a\x1b]0;x\x07", "b", "c"])))
    onnx_case("class_names deep nesting", meta("class_names", "[" * 5000 + "]" * 5000))
    onnx_case("frames -5", meta("frames", "-5"))
    onnx_case("frames 10**12", meta("frames", str(10**12)))
    onnx_case("frames 400 digits", meta("frames", "9" * 400))
    onnx_case("num_person 0", meta("num_person", "0"))
    onnx_case("layout garbage", meta("layout", "joints = ["))
    onnx_case(
        "layout 2000 joints",
        meta(
            "layout",
            "joints = ["
            + ",".join(f'"j{i}"' for i in range(2000))
            + "]\nparents = ["
            + ",".join(f'"j{max(i - 1, 0)}"' for i in range(2000))
            + ']\ncenter = "j0"\nshoulders = ["j1", "j2"]\n',
        ),
    )
    onnx_case("streams unknown view", meta("streams", json.dumps(["joint\x1b", "rot13"])), src="ensemble")
    onnx_case("streams not a list", meta("streams", "7"), src="ensemble")
    onnx_case(
        "fusion weights NaN",
        meta("fusion_weights", '{"joint": NaN, "motion": 1}'),
        "evaluate",
        src="ensemble",
    )
    onnx_case(
        "fusion weights negative",
        meta("fusion_weights", '{"joint": -1, "motion": 1}'),
        "evaluate",
        "either",
        src="ensemble",
    )
    onnx_case(
        "fusion weights strings",
        meta("fusion_weights", '{"joint": "a", "motion": 1}'),
        "evaluate",
        src="ensemble",
    )
    onnx_case("preprocess mode unknown", meta("preprocess", json.dumps({"mode": "magic", "frames": 16})))
    onnx_case("preprocess deep nesting", meta("preprocess", "[" * 5000 + "]" * 5000))
    onnx_case("version ESC", meta("version", "0.1\x1b[2J"), expect="either")
    onnx_case("kind unknown", meta("kind", "virus"))

    def input_v24(m, d):
        m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 24

    onnx_case("input declares 24 joints", input_v24)

    def input_int(m, d):
        m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64

    onnx_case("input dtype int64", input_int)

    def opset(v):
        def edit(m, d):
            m.opset_import[0].version = v

        return edit

    onnx_case("opset 99", opset(99))
    onnx_case("opset 1", opset(1))

    def ir99(m, d):
        m.ir_version = 99

    onnx_case("ir_version 99", ir99)

    def custom_op(m, d):
        m.graph.node[0].op_type = "SystemCall"
        m.graph.node[0].domain = "evil.domain"
        m.opset_import.add(domain="evil.domain", version=1)

    onnx_case("custom-domain op", custom_op)

    def nan_weights(m, d):
        for init in m.graph.initializer:
            if init.data_type == onnx.TensorProto.FLOAT and init.raw_data:
                arr = np.frombuffer(init.raw_data, np.float32).copy()
                arr[:] = np.nan
                init.raw_data = arr.tobytes()

    onnx_case("NaN weights", nan_weights)
    onnx_case("NaN weights", nan_weights, "evaluate")

    def ext_secret(m, d):
        init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value=str(d.parent / "secret.txt"))

    onnx_case("external data absolute path to secret", ext_secret)

    def ext_rel(m, d):
        init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="../secret.txt")

    onnx_case("external data ../secret.txt", ext_rel)

    def ext_offset(m, d):
        init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        (d / "w.bin").write_bytes(init.raw_data)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="w.bin")
        init.external_data.add(key="offset", value=str(2**62))
        init.external_data.add(key="length", value="16")

    onnx_case("external data offset 2**62", ext_offset)

    def ext_osc_name(m, d):  # onnxruntime's own logger prints the tensor name raw on stderr
        init = max(m.graph.initializer, key=lambda t: len(t.raw_data))
        old, new = init.name, "w\x1b]0;PWNED-TITLE\x07x"
        init.name = new
        for node in m.graph.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        (d / "w.bin").write_bytes(init.raw_data)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="w.bin")
        init.external_data.add(key="length", value="16")

    onnx_case("tensor name with OSC, external data length wrong", ext_osc_name)

    def unused_osc(m, d):  # a valid model, one unused initializer named with an OSC title sequence
        m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(2, np.float32), "u\x1b]0;PWNED\x07"))

    onnx_case("unused initializer named with OSC", unused_osc, expect="either")

    def truncated(m, d):
        return m.SerializeToString()[:5000]

    onnx_case("truncated", truncated)

    def not_onnx(m, d):
        return b"PK\x03\x04" + os.urandom(1000)

    onnx_case("random bytes", not_onnx)

    def no_outputs(m, d):
        del m.graph.output[:]

    onnx_case("no outputs", no_outputs)

    def two_inputs(m, d):
        m.graph.input.append(helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, [1]))

    onnx_case("second input", two_inputs)

    def dup_meta(m, d):
        m.metadata_props.add(key="class_names", value=json.dumps(["x", "y", "z"]))

    onnx_case("duplicate class_names metadata", dup_meta, expect="either")

    def huge_meta(m, d):
        m.metadata_props.add(key="notes", value="n" * 20_000_000)

    onnx_case("20 MB unknown metadata", huge_meta, expect="either")

    def output_renamed(m, d):
        old = m.graph.output[0].name
        for node in m.graph.node:
            for i, o in enumerate(node.output):
                if o == old:
                    node.output[i] = "zzz"
        m.graph.output[0].name = "zzz"

    onnx_case("output renamed", output_renamed, expect="either")


# ----------------------------------------------------------------------------------------- evaluate args
def register_evaluate_cases() -> None:
    def ev(*extra: str, model: str = "models/ensemble.onnx") -> Callable[[Path], list[str]]:
        return lambda d: [
            "evaluate",
            "--data",
            B("s.h5"),
            "--model",
            B(model),
            "--no-progress",
            *[e.replace("{d}", str(d)) for e in extra],
        ]

    for s in ("nope", "../val", "val\x1b[2J", ""):
        simple(f"evaluate --split {s!r}", "evaluate", ev("--split", s))
    for wgt in (
        "joint=nan",
        "joint=-1,motion=1",
        "bogus=1",
        "joint=1e400",
        "joint=",
        "=,=,",
        "joint=0,motion=0",
    ):
        simple(f"evaluate --weights {wgt!r}", "evaluate", ev("--weights", wgt))
    for b in ("0", "-1", str(10**12)):
        simple(
            f"evaluate --batch-size {b}",
            "evaluate",
            ev("--batch-size", b),
            expect="either" if b == str(10**12) else "bad",
        )
    for s in ("5/2", "0/0", "-1/2", "a/b", "1e300/2", "0/" + "9" * 30, "1/2/3"):
        simple(f"evaluate --shard {s}", "evaluate", ev("--shard", s))
    simple(
        "evaluate --threads 10**6 (clamp with a warning allowed)",
        "evaluate",
        ev("--threads", str(10**6)),
        expect="either",
    )
    simple("evaluate --report a directory", "evaluate", ev("--report", "{d}"))
    simple("evaluate --report = model", "evaluate", ev("--report", B("models/ensemble.onnx")))
    simple(
        "evaluate same model twice",
        "evaluate",
        lambda d: [
            "evaluate",
            "--data",
            B("s.h5"),
            "--model",
            B("models/joint.onnx"),
            "--model",
            B("models/joint.onnx"),
            "--no-progress",
        ],
    )
    simple(
        "evaluate ensemble + stream model",
        "evaluate",
        lambda d: [
            *evaluate_argv(),
            "--model",
            B("models/joint.onnx"),
            "--no-progress",
        ],
    )

    def other_frames(d: Path) -> list[str]:
        subprocess.run(
            [
                CROSSCLR,
                "synth",
                "--out",
                str(d / "c.h5"),
                "--classes",
                "3",
                "--per-class",
                "2",
                "--frames",
                "20",
            ],
            capture_output=True,
        )
        return ["evaluate", "--data", str(d / "c.h5"), "--model", B("models/ensemble.onnx"), "--no-progress"]

    simple("evaluate cache of 20 frames, model of 16", "evaluate", other_frames, expect="either")

    def other_classes(d: Path) -> list[str]:
        subprocess.run(
            [
                CROSSCLR,
                "synth",
                "--out",
                str(d / "c.h5"),
                "--classes",
                "5",
                "--per-class",
                "2",
                "--frames",
                "16",
            ],
            capture_output=True,
        )
        return ["evaluate", "--data", str(d / "c.h5"), "--model", B("models/ensemble.onnx"), "--no-progress"]

    simple("evaluate cache of 5 classes, model of 3", "evaluate", other_classes)


# --------------------------------------------------------------------------------------- merge-reports
def register_merge_cases() -> None:
    def merge(make: Callable[[Path], list[Path]], expect: str = "bad") -> Callable[[Path], list[str]]:
        def setup(d: Path) -> list[str]:
            return ["merge-reports", *map(str, make(d)), "--out", str(d / "m.json")]

        return setup

    def pair(fix: Callable[[dict], object] | None = None, text: str | None = None):
        def make(d: Path) -> list[Path]:
            a = json.loads((BASE / "r0.json").read_text())
            if fix:
                fix(a)
            (d / "a.json").write_text(text if text is not None else json.dumps(a))
            shutil.copy(BASE / "r1.json", d / "b.json")
            return [d / "a.json", d / "b.json"]

        return make

    simple("merge: report not JSON", "merge", merge(pair(text="{not json")))
    simple("merge: report deep nesting", "merge", merge(pair(text="[" * 5000 + "]" * 5000)))
    simple("merge: report a JSON list", "merge", merge(pair(text="[1, 2]")))
    simple("merge: report with NaN", "merge", merge(pair(text='{"a": NaN}')))
    simple("merge: 400-digit number", "merge", merge(pair(text='{"shard": [0, 1' + "0" * 400 + "]}")))
    simple(
        "merge: same shard twice",
        "merge",
        lambda d: (
            shutil.copy(BASE / "r0.json", d / "a.json"),
            shutil.copy(BASE / "r0.json", d / "b.json"),
            ["merge-reports", str(d / "a.json"), str(d / "b.json"), "--out", str(d / "m.json")],
        )[-1],
    )
    simple(
        "merge: one shard of two",
        "merge",
        lambda d: ["merge-reports", B("r0.json"), "--out", str(d / "m.json")],
    )
    simple(
        "merge: report is a directory",
        "merge",
        lambda d: ["merge-reports", str(d), B("r1.json"), "--out", str(d / "m.json")],
    )

    def del_key(k: str) -> Callable[[dict], None]:
        return lambda a: a.pop(k, None)

    keys = list(json.loads((BASE / "r0.json").read_text()).keys())
    for k in keys[:6]:
        simple(f"merge: report without key {k!r}", "merge", merge(pair(del_key(k))))
    simple(
        "merge: class names ESC",
        "merge",
        merge(pair(lambda a: a.__setitem__("class_names", ["a\x1b]0;x\x07", "b", "c"]))),
    )


# ---------------------------------------------------------------------------------------- plot-metrics
def register_plot_cases() -> None:
    def pm(text: str | bytes, *extra: str, expect: str = "bad") -> None:
        def setup(d: Path) -> list[str]:
            p = d / "metrics.jsonl"
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            return ["plot-metrics", str(p), "--out", str(d / "c.png"), *extra]

        CASES.append(Case(f"plot-metrics {text[:30]!r} {' '.join(extra)}", "plot", setup, expect, torch=True))

    good = (BASE / "run" / "metrics.jsonl").read_text()
    pm("")
    pm(os.urandom(500))
    pm('{"kind": "step", "epoch": 1, "step": 1, "loss": NaN, "lr": Infinity}\n' * 3, expect="either")
    pm('{"kind": "step", "epoch": 1' + "0" * 400 + ', "step": 1, "loss": 1, "lr": 1}\n')
    pm("[" * 5000 + "]" * 5000 + "\n")
    pm(good, "--rows", "-1")
    pm(good, "--rows", str(10**12), expect="either")
    pm('{"kind": "epoch\x1b]0;x\x07", "epoch": "one"}\n')

    def pm_out_dir(d: Path) -> list[str]:
        shutil.copy(BASE / "run" / "metrics.jsonl", d / "m.jsonl")
        (d / "o.png").mkdir()
        return ["plot-metrics", str(d / "m.jsonl"), "--out", str(d / "o.png")]

    simple("plot-metrics --out a directory", "plot", pm_out_dir, torch=True)

    def pm_folder_without(d: Path) -> list[str]:
        return ["plot-metrics", str(d)]

    simple("plot-metrics folder without metrics", "plot", pm_folder_without, torch=True)


# ------------------------------------------------------------------------------------ torch commands
def register_torch_cases() -> None:
    def tr(*extra: str) -> Callable[[Path], list[str]]:
        return lambda d: [
            "train",
            "--data",
            B("s.h5"),
            "--config",
            "tiny",
            "--out",
            str(d / "r"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--streams",
            "joint",
            "--no-progress",
            *[e.replace("{d}", str(d)) for e in extra],
        ]

    for name, extra in [
        ("--epochs 0", ("--epochs", "0")),
        ("--batch-size 0", ("--batch-size", "0")),
        ("--lr nan", ("--lr", "nan")),
        ("--lr -1", ("--lr", "-1")),
        ("--streams joint,joint", ("--streams", "joint,joint")),
        ("--streams rot13", ("--streams", "rot13")),
        ("--config missing preset", ("--config", "no-such-preset")),
        ("--device cuda:99", ("--device", "cuda:99")),
        ("--device bogus", ("--device", "bogus")),
        ("--seed 2**80", ("--seed", str(2**80))),
        ("--save-every 0", ("--save-every", "0")),
        ("--cross-epoch -5", ("--cross-epoch", "-5")),
        ("--num-workers -1", ("--num-workers", "-1")),
        ("--batch-size 10**9", ("--batch-size", str(10**9))),
    ]:
        simple(f"train {name}", "train", tr(*extra), torch=True)

    def cfg(text: str) -> Callable[[Path], list[str]]:
        def setup(d: Path) -> list[str]:
            (d / "c.toml").write_text(text)
            return tr("--config", str(d / "c.toml"))(d)

        return setup

    simple("train config unknown key", "train", cfg("epochs = 1\nbogus_key = 3\n"), torch=True)
    simple("train config lr string", "train", cfg('lr = "fast"\n'), torch=True)
    simple("train config lr nan", "train", cfg("lr = nan\n"), torch=True)
    simple("train config deep nesting", "train", cfg("x = " + "[" * 3000 + "]" * 3000), torch=True)
    simple("train config model.base_channels -8", "train", cfg("[model]\nbase_channels = -8\n"), torch=True)

    def pwn_pt(d: Path) -> Path:
        p = d / "evil.pt"
        p.write_bytes(pickle.dumps(_Pwn(str(d / "PWNED"))))
        return p

    def pwn_torch_zip(d: Path) -> Path:
        import torch

        p = d / "evil.pt"
        torch.save({"x": _Pwn(str(d / "PWNED"))}, p)
        return p

    simple(
        "train --init-from pickle payload",
        "train",
        lambda d: tr("--init-from", str(pwn_pt(d)))(d),
        torch=True,
    )
    simple(
        "linear --checkpoint torch zip with payload",
        "linear",
        lambda d: [
            "linear",
            "--data",
            B("s.h5"),
            "--checkpoint",
            str(pwn_torch_zip(d)),
            "--out",
            str(d / "l"),
            "--epochs",
            "1",
        ],
        torch=True,
    )
    simple(
        "knn --checkpoint raw pickle payload",
        "knn",
        lambda d: ["knn", "--data", B("s.h5"), "--checkpoint", str(pwn_pt(d)), "-k", "1"],
        torch=True,
    )
    simple(
        "export --checkpoint pickle payload",
        "export",
        lambda d: ["export", "--checkpoint", str(pwn_torch_zip(d)), "--out", str(d / "m")],
        torch=True,
    )
    simple(
        "import-official pickle payload",
        "import",
        lambda d: ["import-official", str(pwn_torch_zip(d)), "--out", str(d / "o.pt")],
        torch=True,
    )

    def lin(*extra: str) -> Callable[[Path], list[str]]:
        return lambda d: [
            "linear",
            "--data",
            B("s.h5"),
            "--checkpoint",
            B("run/pretrain.pt"),
            "--out",
            str(d / "l"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            *extra,
        ]

    for name, extra in [
        ("--epochs 0", ("--epochs", "0")),
        ("--lr nan", ("--lr", "nan")),
        ("--milestones a,b", ("--milestones", "a,b")),
        (
            "--fusion separate --weights joint=nan",
            ("--fusion", "separate", "--weights", "joint=nan,motion=1"),
        ),
        ("--train-split nope", ("--train-split", "nope")),
        ("--streams bone (not in ckpt)", ("--streams", "bone")),
        ("--batch-size -4", ("--batch-size", "-4")),
    ]:
        simple(f"linear {name}", "linear", lin(*extra), torch=True)
    simple(
        "linear --checkpoint text file",
        "linear",
        lambda d: ((d / "t.pt").write_text("hello"), lin()(d)[:4] + [str(d / "t.pt")] + lin()(d)[5:])[-1],
        torch=True,
    )

    def knn(*extra: str) -> Callable[[Path], list[str]]:
        return lambda d: ["knn", "--data", B("s.h5"), "--checkpoint", B("run/pretrain.pt"), *extra]

    for name, extra in [
        ("-k 0", ("-k", "0")),
        ("-k -1", ("-k", "-1")),
        ("-k a", ("-k", "a")),
        ("-t 0", ("-t", "0")),
        ("-t nan", ("-t", "nan")),
        ("-k 1000000", ("-k", "1000000")),
    ]:
        simple(f"knn {name}", "knn", knn(*extra), torch=True, expect="either" if "1000000" in name else "bad")

    def ex(*extra: str) -> Callable[[Path], list[str]]:
        return lambda d: ["export", "--checkpoint", B("lin/linear.pt"), "--out", str(d / "m"), *extra]

    for name, extra in [
        ("--opset 99", ("--opset", "99")),
        ("--opset 5", ("--opset", "5")),
        ("--tolerance -1", ("--tolerance", "-1")),
        ("--tolerance nan", ("--tolerance", "nan")),
        ("--fp16-tolerance nan", ("--precision", "fp16", "--fp16-tolerance", "nan")),
        ("--streams bogus", ("--streams", "bogus")),
        ("--quantize int8 without data", ("--quantize", "int8")),
    ]:
        simple(f"export {name}", "export", ex(*extra), torch=True)
    simple(
        "export --checkpoint pretrain.pt",
        "export",
        lambda d: ["export", "--checkpoint", B("run/pretrain.pt"), "--out", str(d / "m")],
        torch=True,
        expect="either",
    )

    def imp(*extra: str) -> Callable[[Path], list[str]]:
        return lambda d: ["import-official", B("run/pretrain.pt"), "--out", str(d / "o.pt"), *extra]

    for name, extra in [
        ("--frames 0", ("--frames", "0")),
        ("--num-person 0", ("--num-person", "0")),
        ("--layout bogus", ("--layout", "bogus")),
    ]:
        simple(f"import-official {name}", "import", imp(*extra), torch=True)
    simple(
        "import-official garbage file",
        "import",
        lambda d: (
            (d / "g.pt").write_bytes(os.urandom(3000)),
            ["import-official", str(d / "g.pt"), "--out", str(d / "o.pt")],
        )[-1],
        torch=True,
    )


# ---------------------------------------------------------------------------------------------- synth
def register_synth_cases() -> None:
    def sy(*extra: str, expect: str = "bad") -> None:
        simple(
            f"synth {' '.join(extra)}",
            "synth",
            lambda d: ["synth", "--out", str(d / "s.h5"), *extra],
            expect=expect,
        )

    sy("--frames", str(10**9))
    sy("--classes", "1000", "--per-class", "2", "--frames", "4", expect="either")
    sy("--classes", "0")
    sy("--seed", "-1", "--classes", "2", "--per-class", "2", "--frames", "4", expect="either")
    sy("--seed", str(2**80), "--classes", "2", "--per-class", "2", "--frames", "4", expect="either")
    sy("--per-class", str(2**63))
    simple("synth --out ''", "synth", lambda d: ["synth", "--out", ""])


# --------------------------------------------------------------------------------------------- stream
def register_stream_cases() -> None:
    frame = {"t": 0.0, "bodies": {"1": np.zeros((25, 3)).round(2).tolist()}}

    def st(name: str, lines: bytes, *extra: str, expect: str = "either") -> None:
        def setup(d: Path) -> list[str]:
            (d / "s.jsonl").write_bytes(lines)
            return ["predict", "--model", B("models/ensemble.onnx"), "--stream", str(d / "s.jsonl"), *extra]

        CASES.append(Case(f"stream {name}", "stream", setup, expect))

    good = "\n".join(json.dumps({**frame, "t": i / 30}) for i in range(40)).encode() + b"\n"
    st("not JSON", b"hello\n" * 5 + good)
    st("deep nesting", b"[" * 5000 + b"]" * 5000 + b"\n" + good)
    st("400-digit timestamp", b'{"t": 1' + b"0" * 400 + b', "bodies": {}}\n' + good)
    st("NaN coordinates", good.replace(b"0.0, 0.0, 0.0", b"NaN, 0.0, 0.0"))
    st("1e30 coordinates", good.replace(b"0.0, 0.0, 0.0", b"1e30, 0.0, 0.0"))
    st("wrong joint count", json.dumps({"t": 0, "bodies": {"1": [[0, 0, 0]] * 7}}).encode() + b"\n" + good)
    st("timestamps backwards", b"\n".join(json.dumps({**frame, "t": -i}).encode() for i in range(40)) + b"\n")
    st("10 MB single line", b'{"t": 0, "x": "' + b"a" * 10_000_000 + b'"}\n' + good)
    st("binary garbage", os.urandom(20000))
    st("empty", b"")
    st("body ids dicts", json.dumps({"t": 0, "bodies": [{"a": 1}]}).encode() + b"\n" + good)
    st("ESC in body id", json.dumps({"t": 0, "bodies": {"\x1b]0;x\x07": [[0, 0, 0]] * 25}}).encode() + b"\n")
    st("invalid utf-8", b'{"t": 0, "bodies": {"\xff": 1}}\n' + good)
    for opt, v in [
        ("--window", "0"),
        ("--window", "-1"),
        ("--window", str(10**9)),
        ("--hop", "0"),
        ("--span", "nan"),
        ("--span", "1e-300"),
        ("--span", "-1"),
        ("--max-gap", "nan"),
        ("--queue", "0"),
        ("--queue", "-1"),
    ]:
        st(f"{opt} {v}", good, opt, v, expect="bad")
    for v in ("0", "nan", "-1", "1e-300"):
        simple(
            f"replay --fps {v}",
            "stream",
            lambda d, v=v: [
                "predict",
                "--model",
                B("models/ensemble.onnx"),
                "--replay",
                B("good.npy"),
                "--fps",
                v,
                "--no-wait",
            ],
        )
    simple(
        "replay a directory",
        "stream",
        lambda d: ["predict", "--model", B("models/ensemble.onnx"), "--replay", str(d), "--no-wait"],
    )
    CASES.append(
        Case(
            "stream stdin at EOF",
            "stream",
            lambda d: ["predict", "--model", B("models/ensemble.onnx"), "--stream"],
            "either",
            stdin=None,
        )
    )


# --------------------------------------------------------------------------------------------- global
def register_global_cases() -> None:
    simple("unknown command", "global", lambda d: ["frobnicate"])
    simple("unknown option", "global", lambda d: ["info", "--frobnicate"])
    simple("info without a cache", "global", lambda d: ["info"])
    simple("info --system with a cache", "global", lambda d: ["info", "--system", B("s.h5")], expect="either")
    simple("-vvvvvvvv info bad", "global", lambda d: ["-vvvvvvvv", "info", str(d / "x.h5")])
    simple("option value with NUL-free 100k chars", "global", lambda d: ["info", "x" * 100_000])
    simple("merge-reports no reports", "global", lambda d: ["merge-reports", "--out", str(d / "m.json")])
    simple(
        "linear --eval-only with --out",
        "global",
        lambda d: [
            "linear",
            "--data",
            B("s.h5"),
            "--checkpoint",
            B("lin/linear.pt"),
            "--eval-only",
            "--out",
            str(d / "x"),
        ],
        torch=True,
        expect="either",
    )


# ---------------------------------------------------------------------------------------------- runner
def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in files + dirs:
            p = Path(root) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                h = (
                    hashlib.sha1(p.read_bytes()).hexdigest()
                    if st.st_size < 50_000_000
                    else str(st.st_mtime_ns)
                )
                out[str(p.relative_to(folder))] = ("file:" + h, st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(folder))] = ("link:" + os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[str(p.relative_to(folder))] = ("dir", 0)
            else:  # FIFO, device, socket: replaced by a regular file would be data loss
                out[str(p.relative_to(folder))] = (f"special:{stat.S_IFMT(st.st_mode)}", 0)
    return out


def _limits() -> None:
    os.setsid()
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**30, 2 * 2**30))


IGNORED_NEW = (".lock",)  # lock files beside outputs are allowed to remain (documented in fileio)


def run_case(c: Case, root: Path, index: int) -> Outcome:
    d = root / f"case{index:03d}"
    d.mkdir()
    try:
        argv = c.setup(d)
    except Exception as e:  # noqa: BLE001 - a probe bug, reported as such
        return Outcome(c, "probe-setup-failed", None, f"{type(e).__name__}: {e}")
    before = snapshot(d)
    t0 = time.perf_counter()
    timeout = TORCH_TIMEOUT_S if c.torch else TIMEOUT_S
    env = dict(os.environ, COLUMNS="100", PYTHONWARNINGS="ignore")
    env.pop("CROSSCLR_DEBUG", None)
    try:
        proc = subprocess.Popen(
            [CROSSCLR, *argv],
            cwd=d,
            stdin=subprocess.PIPE if c.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limits,
            env=env,
        )
    except OSError as e:
        return Outcome(c, "probe-setup-failed", None, f"{type(e).__name__}: {e}")
    try:
        out, err = proc.communicate(c.stdin, timeout=timeout)
        rc = proc.returncode
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc, hung = proc.returncode, True
    secs = time.perf_counter() - t0
    after = snapshot(d)
    text = (out + err).decode("utf-8", "replace")
    errlines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    non_log = [ln for ln in errlines if not ln.startswith(("WARNING ", "INFO ", "DEBUG "))]
    changed = [k for k, v in before.items() if after.get(k) != v]
    new = [k for k in after if k not in before and not k.endswith(IGNORED_NEW)]
    o = Outcome(c, "clean", rc, seconds=secs)

    def bad(kind: str, detail: str) -> Outcome:
        o.kind, o.detail = kind, detail
        return o

    if (d / "PWNED").exists() or (d.parent / "PWNED").exists():
        return bad("code-ran", "a pickle payload ran")
    if SECRET in text:
        return bad("secret-leak", "secret file content in the output")
    if any(ch in text for ch in "\x1b\x07\x9b"):
        return bad("escape", "ESC/BEL/CSI reached the terminal")
    if changed:
        return bad("overwritten", "changed/removed: " + ", ".join(changed[:3]))
    if hung:
        return bad("hang", f"killed after {timeout:.0f} s")
    if rc is not None and rc < 0:
        return bad("signal", f"killed by signal {-rc}: {tail(errlines)}")
    if "Traceback (most recent call last)" in text:
        return bad("traceback", tail(errlines))
    if rc == 0:
        if c.expect == "bad":
            return bad(
                "exit-0-on-bad-input", tail(errlines) or tail(out.decode("utf-8", "replace").splitlines())
            )
        return o
    if rc != 1:
        return bad("wrong-exit-code", f"rc {rc}: {tail(errlines)}")
    if c.expect == "ok":
        return bad("refused-good-input", tail(errlines))
    if len(non_log) != 1 or not non_log[0].startswith("error: "):
        return bad("multi-line", f"{len(non_log)} lines: " + " | ".join(non_log[:3])[:300])
    if new:
        return bad("wrote-output", "new: " + ", ".join(new[:3]))
    if "this is a bug or an input it does not expect" in non_log[0]:
        return bad("catch-all", non_log[0][:300])
    if not names_something(non_log[0], argv):
        return bad("unnamed", non_log[0][:300])
    o.detail = non_log[0][:200]
    return o


def names_something(line: str, argv: list[str]) -> bool:
    """Whether an error line names a file or option of the command: a path's name (escaped forms too), an
    option, or the command itself ("crossclr CMD")."""
    if "crossclr " in line or any(line.startswith(f"error: {a}:") for a in argv[:2]):
        return True
    if "INPUT" in line or ("''" in line and "" in argv):  # a positional argument's name; an empty value
        return True
    if any(len(a) > 250 and a[:100].rsplit("/", 1)[-1][:40] in line for a in argv):  # shortened long names
        return True
    escaped = line.encode("ascii", "backslashreplace").decode()
    for a in argv:
        if a.startswith("-") and len(a) > 1 and a.split("=")[0] in line:
            return True
        if not a.startswith("-") and len(a) >= 3 and (f"'{a}'" in line or f"'{a}'" in escaped
                                                       or repr(a) in line or f" {a} " in line):
            return True
        if "/" in a or "." in a:
            name = Path(a).name or a
            for form in (name, repr(name)[1:-1], name.encode("unicode_escape").decode()):
                if form and (form in line or form in escaped):
                    return True
    return False


def tail(lines: list[str]) -> str:
    return (lines[-1] if lines else "")[:300]


def register_all() -> None:
    register_cache_cases()
    register_path_cases()
    register_layout_cases()
    register_npz_cases()
    register_official_cases()
    register_ntu_cases()
    register_predict_cases()
    register_onnx_cases()
    register_evaluate_cases()
    register_merge_cases()
    register_plot_cases()
    register_torch_cases()
    register_synth_cases()
    register_stream_cases()
    register_global_cases()


def main() -> None:
    global BASE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="run the cases whose name holds this text")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--base", default="", help="reuse a base folder built by an earlier run")
    ap.add_argument("--json", default="", help="also write the outcomes as JSON here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crossclr-probe-"))
    root.chmod(0o755)
    t0 = time.perf_counter()
    if args.base:
        BASE = Path(args.base)
        if not BASE.exists():
            BASE.mkdir(parents=True)
            BASE.chmod(0o755)
            build_base(BASE)
    else:
        BASE = root / "base"
        BASE.mkdir()
        build_base(BASE)
    (root / "cases").mkdir()
    (root / "cases").chmod(0o777)
    (root / "cases" / "secret.txt").write_text((SECRET + "\n") * 8)
    (root / "cases" / "secret.txt").chmod(0o644)
    base_before = snapshot(BASE)
    register_all()
    cases = [c for c in CASES if args.only in c.name]
    print(f"base built in {time.perf_counter() - t0:.0f} s; {len(cases)} kinds", flush=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda ic: run_case(ic[1], root / "cases", ic[0]), enumerate(cases)))
    if snapshot(BASE) != base_before:
        print("!! the shared base folder changed during the probe (a case wrote into its inputs)")
    unclean = [o for o in outcomes if o.kind != "clean"]
    print(f"\n{'kind':<22} {'rc':>4}  {'case':<58} detail")
    for o in sorted(unclean, key=lambda o: (o.kind, o.case.group)):
        print(f"{o.kind:<22} {o.rc!s:>4}  {o.case.name[:58]:<58} {o.detail[:160]!r}")
    clean = len(outcomes) - len(unclean)
    by_kind: dict[str, int] = {}
    for o in unclean:
        by_kind[o.kind] = by_kind.get(o.kind, 0) + 1
    share = 100 * clean / max(1, len(outcomes))
    print(f"\n{clean}/{len(outcomes)} clean ({share:.1f} %); unclean by kind: {by_kind}")
    print(f"total {time.perf_counter() - t0:.0f} s (shared machine)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {
                        "name": o.case.name,
                        "group": o.case.group,
                        "kind": o.kind,
                        "rc": o.rc,
                        "detail": o.detail,
                        "s": round(o.seconds, 1),
                    }
                    for o in outcomes
                ],
                indent=1,
            )
        )
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
