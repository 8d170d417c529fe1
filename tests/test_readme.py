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
