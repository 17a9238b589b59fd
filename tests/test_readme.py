"""The README as a newcomer runs it: the blocks marked runnable run as written, and every relative link in the
README and docs/ points at a file (and heading) that exists.

A block is runnable when the line right before its opening fence is ``<!-- runnable -->``; only ``bash``
and ``python`` blocks may be marked. The marked blocks run in order in one empty folder (later blocks use what
earlier ones wrote), shell blocks with ``bash -e`` and the ``crossclr`` of this environment first
on PATH, Python blocks with this interpreter. Blocks that need NTU data or a GPU are simply not marked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"
RUNNABLE_LANGUAGES = ("bash", "python")
BLOCK_TIMEOUT_S = 600

_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")


class Block(NamedTuple):
    language: str
    code: str
    line: int  # 1-based line of the opening fence


def runnable_blocks(text: str) -> list[Block]:
    """The fenced blocks whose opening fence directly follows the runnable marker, in file order."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        fence = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise AssertionError(f"README.md:{i + 1}: {MARKER} must be followed directly by a fenced block")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].strip() == fence.group(1)), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 2}: the runnable block is never closed")
        blocks.append(Block(fence.group(2), "\n".join(lines[i + 2:end]) + "\n", i + 2))
    return blocks


def prose_lines(text: str, *, inline_code: bool = False) -> list[tuple[int, str]]:
    """(1-based line number, line) outside fenced code blocks; inline code removed unless asked for."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            out.append((n, line if inline_code else _INLINE_CODE.sub("", line)))
    return out


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to '-')."""
    anchors: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8"), inline_code=True):
        m = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of ``path`` whose file or heading does not exist."""
    bad = []
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{n}: {target}"
            if not dest.exists():
                bad.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
                bad.append(f"{where} (no heading with that anchor in {dest.relative_to(ROOT)})")
    return bad


def test_runnable_blocks_are_marked_fenced_and_cover_the_tour() -> None:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert {b.language for b in blocks} <= set(RUNNABLE_LANGUAGES), [b.language for b in blocks]
    code = "".join(b.code for b in blocks)
    steps = ("crossclr synth", "crossclr train", "crossclr linear", "crossclr export", "crossclr evaluate",
             "crossclr predict", "--stream", "Predictor(")
    for step in steps:
        assert step in code, f"the README's runnable tour lacks {step!r}"


def test_fresh_machine_section_names_the_ci_commands() -> None:
    """.ci/run and CI rely on the README naming the demo and the test command in this section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Fresh machine: two commands", 1)[1].split("\n## ", 1)[0]
    assert "crossclr demo --out demo_out" in section
    assert "python -m pytest -q" in section
    assert MARKER not in section  # they build a virtual environment: never run by this test


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(path: Path) -> None:
    assert broken_links(path) == []


def _run_block(block: Block, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    if block.language == "bash":
        args = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    else:
        args = [sys.executable, "-c", block.code]
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)


@pytest.mark.slow
def test_readme_runnable_blocks_run_as_written(tmp_path: Path) -> None:
    for module, extra in (("torch", "train"), ("onnx", "train"), ("onnxruntime", "cpu")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the README's tour trains and exports: needs {module} (extra '{extra}')")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "CROSSCLR_THREADS": "1",
           "MPLBACKEND": "Agg"}
    outputs = []
    for block in runnable_blocks(README.read_text(encoding="utf-8")):
        res = _run_block(block, tmp_path, env)
        assert res.returncode == 0, (f"README.md:{block.line} ({block.language}) exited {res.returncode}\n"
                                     f"--- code\n{block.code}--- stdout\n{res.stdout[-3000:]}"
                                     f"--- stderr\n{res.stderr[-3000:]}")
        outputs.append(res.stdout)
    # what the tour promises to leave behind
    report = json.loads((tmp_path / "report.json").read_text())
    assert "fused" in report["results"]
    assert (tmp_path / "models" / "tour" / "ensemble.onnx").stat().st_size > 0
    frames = (tmp_path / "frames.jsonl").read_text().splitlines()
    assert frames and all("bodies" in json.loads(f) for f in frames)
    stream_lines = [json.loads(x) for out in outputs for x in out.splitlines() if x.startswith('{"window"')]
    assert stream_lines, "the stream block printed no prediction"
    assert all(p["top"] for p in stream_lines)
