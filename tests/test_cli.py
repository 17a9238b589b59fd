"""The command line as a whole: fast start without torch, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _torch_free_after(imports: str) -> bool:
    """Whether a fresh interpreter running ``imports`` has no torch module loaded."""
    code = (f"import sys\n{imports}\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "sys.exit(1 if bad else 0)")
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_import_runtime_and_cli_do_not_import_torch() -> None:
    assert _torch_free_after("import crossclr_infer, cli, crossclr_infer.layouts, crossclr_infer.graph, "
                             "crossclr_infer.views")


def test_every_runtime_module_is_torch_free() -> None:
    assert _torch_free_after("import pkgutil, importlib, crossclr_infer\n"
                             "for m in pkgutil.walk_packages(crossclr_infer.__path__, 'crossclr_infer.'):\n"
                             "    importlib.import_module(m.name)")


def test_help_lists_commands() -> None:
    from click.testing import CliRunner

    from cli import crossclr

    result = CliRunner().invoke(crossclr, ["--help"])
    assert result.exit_code == 0
    assert "prepare" in result.output


def test_user_error_is_one_line_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "info", "/nonexistent/file.h5"],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("layout", ["no-such-layout"])
def test_unknown_layout_error(layout: str) -> None:
    from crossclr_infer.layouts import get_layout

    with pytest.raises(ValueError, match="unknown layout"):
        get_layout(layout)


def test_one_version_for_the_package_the_cli_and_the_models() -> None:
    """pyproject reads the version from crossclr_infer.__version__, which --version and the ONNX metadata
    (export.onnx_export) print: the installed distribution must say the same."""
    import importlib.metadata

    from click.testing import CliRunner

    import cli
    from crossclr_infer import __version__

    assert importlib.metadata.version("crossclr") == __version__
    out = CliRunner().invoke(cli.crossclr, ["--version"]).output
    assert out.strip() == f"crossclr, version {__version__}"


@pytest.mark.parametrize(("error", "user_error"), [
    (KeyError("layout"), False), (ValueError("x.h5: bad cache"), True), (OSError("x.h5: unreadable"), True)])
def test_a_key_error_is_reported_as_a_bug_not_as_bad_input(tmp_path, monkeypatch, capsys, error, user_error
                                                           ) -> None:
    """docs/architecture.md "Errors": ValueError (CrossclrError) and OSError are the user's; a KeyError raised
    in a command is a bug line naming the command and its inputs, exit 1, no traceback."""
    import cli
    from crossclr_infer.commands import cache as cache_commands

    def broken(path):  # noqa: ANN001, ANN202
        raise error

    monkeypatch.setattr(cache_commands, "open_cache", broken)
    path = tmp_path / "c.h5"
    path.write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        cli.main(["info", str(path)])
    err = capsys.readouterr().err
    assert stop.value.code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if user_error:
        assert err.strip() == f"error: {error}"
    else:
        assert err.startswith(f"error: crossclr info ({path}): unexpected KeyError: 'layout'; this is a bug")
        assert "--debug" in err
