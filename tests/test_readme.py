"""The README's examples run as written: the Python ones on bundled frames, the
command-line workflow (slow) on EMT copper cells."""

from pathlib import Path

import numpy as np
import pytest
from ase.io import write

from kernelpot import load_ethanol

README = Path(__file__).resolve().parents[1] / "README.md"


def test_ten_line_example_runs(tmp_path, monkeypatch):
    frames = load_ethanol()
    monkeypatch.chdir(tmp_path)
    write("train.xyz", frames[:20])
    write("test.xyz", frames[150:153])
    block = README.read_text().split("## A potential in ten lines")[1]
    code = block.split("```python")[1].split("```")[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["forces_std"][0].shape == (9, 3)
    assert namespace["atoms"].calc.results["forces_std"].shape == (9, 3)
    assert (tmp_path / "model.npz").exists()


def test_uncertainty_example_runs():
    """The calibrated-interval example, on bundled frames 10 MD steps apart."""
    frames = load_ethanol()
    namespace = {"train": frames[0:200:10], "valid": frames[5:200:10][:19],
                 "new": frames[3:200:40]}
    block = README.read_text().split("## Uncertainty you can check")[1]
    code = block.split("```python")[1].split("```")[0]
    exec(compile(code, "README.md", "exec"), namespace)
    intervals = namespace["intervals"]
    assert len(intervals) == 5 and intervals[0].shape == (9, 3, 2)
    assert namespace["e_intervals"].shape == (5, 2)
    assert namespace["model"].interval_scores_["energy"].size == 19


def _shell_commands(section: str) -> list[str]:
    """The ``kernelpot`` lines of the first bash block after ``section``, options in [...]
    left out and comments dropped."""
    import re

    block = README.read_text().split(section)[1].split("```bash")[1].split("```")[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [re.sub(r"\s*\[[^\]]*\]", "", line) for line in lines
            if line.startswith("kernelpot ")]


@pytest.mark.slow
def test_readme_workflow_runs_as_written(tmp_path, monkeypatch):
    """The README's command-line workflow, every line as written, on EMT copper cells."""
    import shlex

    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from kernelpot.cli import main

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(260):
        atoms = bulk("Cu", "fcc", 3.6, cubic=True)
        atoms.positions += rng.normal(0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    monkeypatch.chdir(tmp_path)
    write("train.xyz", frames[:220])
    write("test.xyz", frames[220:250])
    write("new.xyz", frames[250:])
    write("start.xyz", frames[0])
    commands = _shell_commands("From your own labelled structures")
    assert len(commands) >= 6 and any(" md " in f" {c} " for c in commands)
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, command
    for output in ("model.npz", "parity.png", "predicted.xyz", "lc.png", "traj.extxyz"):
        assert (tmp_path / output).exists(), output


def test_large_data_sets_example_runs(caplog):
    """The streamed-fit example, on the bundled Si cells with a limit they exceed."""
    from kernelpot import load_silicon

    block = README.read_text().split("## Large data sets")[1]
    code = block.split("```python")[1].split("```")[0]
    assert "design_memory_limit=1.0" in code
    # four cells: make the limit small, and the method sparse (auto picks exact there)
    code = code.replace("design_memory_limit=1.0",
                        "design_memory_limit=1e-4, method='sparse', n_sparse=40")
    namespace = {"frames": load_silicon()}
    with caplog.at_level("INFO", logger="kernelpot.streaming"):
        exec(compile(code, "README.md", "exec"), namespace)
    assert "streamed design" in caplog.text
    assert namespace["model"].method_ == "sparse"
