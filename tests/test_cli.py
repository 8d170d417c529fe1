"""The kernelpot command line."""

import subprocess
import sys

import pytest

from kernelpot.cli import main


def test_descriptors_on_bundled_data(capsys):
    assert main(["descriptors", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "bundled ethanol" in out and "bundled Si" in out
    assert out.count("ACSF") == 2 and out.count("SOAP") == 2
    assert "ms/atom" in out


def test_descriptors_on_a_user_file(tmp_path, capsys, ethanol):
    path = tmp_path / "frames.xyz"
    ethanol.write(path)
    assert main(["descriptors", str(path), "--descriptor", "acsf", "--r-cut", "3.0"]) == 0
    out = capsys.readouterr().out
    assert str(path)[:36] in out and "SOAP" not in out


@pytest.mark.parametrize("argv, message", [
    (["descriptors", "does_not_exist.xyz"], "no such file"),
    (["descriptors", "--frames", "0"], "--frames must be >= 1"),
    (["descriptors", "--r-cut", "-1"], "r_cut must be > 0"),
])
def test_errors_are_one_line_on_stderr(argv, message, capsys):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "junk.xyz"
    path.write_text("this is not\nan xyz file\n")
    assert main(["descriptors", str(path)]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_debug_shows_traceback():
    with pytest.raises(Exception, match="no such file"):
        main(["descriptors", "missing.xyz", "--debug"])


def test_help_has_an_example():
    result = subprocess.run([sys.executable, "-m", "kernelpot", "descriptors", "--help"],
                            capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout and "kernelpot descriptors" in result.stdout


def test_demo_runs_on_bundled_data(capsys):
    assert main(["demo", "--n-train", "12"]) == 0
    out = capsys.readouterr().out
    assert "learned noise" in out and "test forces" in out and "within 1 std" in out


def test_demo_rejects_bad_size(capsys):
    assert main(["demo", "--n-train", "1000"]) == 1
    assert "--n-train must be between" in capsys.readouterr().err
