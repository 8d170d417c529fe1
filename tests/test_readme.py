"""The README's Python example runs as written (on bundled frames)."""

from pathlib import Path

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
