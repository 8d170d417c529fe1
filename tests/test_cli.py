"""The kernelpot command line."""

import re
import subprocess
import sys
import time

import numpy as np
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
    # the value that is wrong first, before any file is read
    (["md", "m.npz", "s.xyz", "--steps", "0", "--temperature", "300"],
     "--steps 0: --steps and --interval must be >= 1"),
    (["md", "m.npz", "s.xyz", "--steps", "5", "--temperature", "300", "--timestep", "-1",
      "--interval", "0"],
     "--interval 0, --timestep -1: --steps and --interval must be >= 1"),
    # before the model is read
    (["eval", "m.npz", "t.xyz", "--intervals", "90"],
     "--intervals is a nominal coverage between 0 and 1 (e.g. 0.9); got 90.0"),
])
def test_errors_are_one_line_on_stderr(argv, message, capsys):
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    # a missing required option was reported instead of the typo that caused it
    (["md", "m.npz", "s.xyz", "--steps", "5", "--temprature", "900"],
     "kernelpot md: error: unknown option --temprature (did you mean --temperature?)"),
    (["fit", "t.xyz", "--n-sparce=3"],
     "kernelpot fit: error: unknown option --n-sparce (did you mean --n-sparse?)"),
    (["eval", "m.npz", "t.xyz", "--zzz"], "kernelpot eval: error: unknown option --zzz\n"),
])
def test_an_unknown_option_is_named_with_the_closest_known_one(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_an_abbreviated_option_still_works(tmp_path, capsys):
    assert main(["md", str(tmp_path / "m.npz"), "s.xyz", "--steps", "5", "--temp", "9"]) == 1
    assert "no such file" in capsys.readouterr().err  # parsed: --temp is --temperature


def test_unreadable_file(tmp_path, capsys):
    path = tmp_path / "junk.xyz"
    path.write_text("this is not\nan xyz file\n")
    assert main(["descriptors", str(path)]) == 1
    assert "cannot read" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    assert main(["descriptors", str(text)]) == 1
    err = capsys.readouterr().err
    assert "ase.io does not know its format" in err and "extxyz" in err
    # a structure file given as the model: what a model file is, no numpy pickle advice
    assert main(["eval", str(path), str(path)]) == 1
    err = capsys.readouterr().err
    assert "is not a kernelpot model file" in err and "pickle" not in err


def test_fit_reads_its_training_file_when_used(tmp_path, capsys):
    from ase.io import write
    from helpers import emt_copper_frames

    from kernelpot import FrameFiles
    from kernelpot.cli._common import _read_frames

    cells = emt_copper_frames(3, seed=0, rattle=0.08)
    write(tmp_path / "train.xyz", cells)
    assert isinstance(_read_frames(str(tmp_path / "train.xyz"), lazy=True), FrameFiles)
    write(tmp_path / "train.bundle", cells, format="bundletrajectory")  # a directory
    assert len(_read_frames(str(tmp_path / "train.bundle"), lazy=True)) == 3
    junk, text = tmp_path / "junk.xyz", tmp_path / "notes.txt"
    junk.write_text("this is not\nan xyz file\n")
    text.write_text("hello\n")
    for path, message in ((junk, "cannot read"), (text, "ase.io does not know its format"),
                          (tmp_path / "missing.xyz", "no such file")):
        assert main(["fit", str(path), "-o", str(tmp_path / "m.npz")]) == 1
        assert message in capsys.readouterr().err


def test_debug_shows_traceback():
    with pytest.raises(Exception, match="no such file"):
        main(["descriptors", "missing.xyz", "--debug"])


@pytest.mark.parametrize("command", ["descriptors", "demo", "fit", "info", "eval", "predict",
                                     "learning-curve", "md"])
def test_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"kernelpot {command}" in out


def test_python_m_kernelpot_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "kernelpot", "md", "--help"],
                            capture_output=True, text=True, check=True)
    assert "examples:" in result.stdout and "kernelpot md" in result.stdout


def test_demo_runs_on_bundled_data(capsys, tmp_path):
    plot = tmp_path / "parity.png"
    assert main(["demo", "--n-train", "12", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "learned noise" in out and "test forces" in out and "within 1 std" in out
    assert "calibrated on the 138 other frames" in out and "conformal 90% intervals" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_size(capsys):
    assert main(["demo", "--n-train", "1000", "--plot", "none"]) == 1
    assert "--n-train must be between" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, ethanol_frames):
    root = tmp_path_factory.mktemp("cli")
    from ase.io import write

    write(root / "train.xyz", ethanol_frames[:12])
    write(root / "test.xyz", ethanol_frames[40:46])
    return root


def _fit(tmp_path, train, model, *options, config="n_restarts = 0\n"):
    """Run ``kernelpot fit`` quietly with a TOML config (no optimiser restarts by
    default); return the exit code."""
    path = tmp_path / "quick.toml"
    path.write_text(config)
    return main(["fit", str(train), "-o", str(model), "--config", str(path), "--quiet",
                 *options])


def _copper_model(tmp_path, seed, *options):
    """Write four EMT copper cells (train.xyz, start.xyz: the first) and an ACSF model
    fitted on them (cu.npz, with ``kernelpot fit`` ``options``); return the model's path."""
    from ase.io import write
    from helpers import emt_copper_frames

    train = emt_copper_frames(4, seed=seed, rattle=0.08)
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "start.xyz", train[0])
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf",
                "--r-cut", "4.0", *options) == 0
    return model


def test_fit_eval_predict_round_trip(cli_files, capsys):
    from ase.io import read

    from kernelpot import load

    model_path = cli_files / "model.npz"
    config = cli_files / "cfg.toml"
    # CLARIFICATIONS.md's style (dotted keys) and the quoted form both work
    config.write_text('n_restarts = 0\nrandom_state = 5\ndescriptor.n_max = 4\n'
                      '"descriptor.l_max" = 3\n')
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model_path),
                 "--config", str(config), "--n-sparse", "40", "--seed", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "learned noise" in out and "training (fitted on these) forces" in out
    assert "leave-one-structure-out (12 structures" in out and "in all" in out
    # 72 H and 24 C atoms have a force factor of their own, 12 O atoms too
    assert re.search(r"the std calibration was fitted on these errors \(its force stds "
                     r"scaled per element: H ×[\d.]+, C ×[\d.]+, O ×[\d.]+\)", out), out
    assert "training (fitted on these) calibration" not in out  # meaningless on training data
    assert "method='auto' chose 'sparse': n_sparse needs it" in out  # why, without -v
    model = load(model_path)
    assert model.descriptor_.n_max == 4 and model.n_restarts == 0
    assert model.random_state == 1  # the command line wins over the file
    assert max(model.n_inducing_.values()) <= 40

    plots = [cli_files / name for name in ("parity.png", "cal.png", "err.png")]
    assert main(["eval", str(model_path), str(cli_files / "test.xyz"), "--plot",
                 str(plots[0]), "--calibration-plot", str(plots[1]), "--error-plot",
                 str(plots[2]), "--intervals", "0.9"]) == 0
    out = capsys.readouterr().out
    # the jackknife+ intervals' coverage, as return_interval gives it
    shown = re.search(r"test 90% intervals \(jackknife\+ from the training structures' "
                      r"leave-one-structure-out errors: at least 80% guaranteed .*\): "
                      r"([\d.]+)% of energies \(mean width [\d.]+ meV/atom\); ([\d.]+)% of "
                      r"force components \(mean width [\d.]+ meV/Å\)", out)
    assert shown, out
    test = read(cli_files / "test.xyz", ":")
    reference = np.concatenate([a.get_forces().ravel() for a in test])
    bounds = np.concatenate([b.reshape(-1, 2) for b in load(model_path).predict_forces(
        test, return_interval=0.9)[1]])
    inside = np.mean((bounds[:, 0] <= reference) & (reference <= bounds[:, 1]))
    assert float(shown.group(2)) == pytest.approx(100 * inside, abs=0.051)
    assert "test forces" in out and "within 1 std" in out and "Spearman" in out
    assert re.search(r"Spearman \(per-atom std, error\) -?[\d.]+ \(exactly right stds of this "
                     r"spread would give about -?[\d.]+; metrics.expected_spearman\)", out)
    assert re.search(r"nats per component; RMS z-score [\d.]+ \(1 for stds the size", out)
    assert re.search(r"test energy calibration: [\d.]+% of energies within 1 std \(Gaussian "
                     r"68.3%\), [\d.]+% within 2", out)
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    predicted = cli_files / "predicted.xyz"
    assert main(["predict", str(model_path), str(cli_files / "test.xyz"), "-o",
                 str(predicted), "--n-jobs", "2"]) == 0  # two workers, the same numbers
    frames = read(predicted, ":")
    test = read(cli_files / "test.xyz", ":")
    energies, energy_std = model.predict(test, return_std=True)
    forces, forces_std = model.predict_forces(test, return_std=True)
    for k, atoms in enumerate(frames):  # extxyz keeps about 8 significant digits
        assert atoms.get_potential_energy() == pytest.approx(energies[k], rel=1e-7)
        np.testing.assert_allclose(atoms.get_forces(), forces[k], atol=1e-6)
        assert atoms.info["energy_std"] == pytest.approx(energy_std[k], rel=1e-6)
        np.testing.assert_allclose(atoms.arrays["forces_std"], forces_std[k], rtol=1e-6)
        assert atoms.info["kernelpot_prediction"].startswith("kernelpot ")
    # predictions fed back as labels: said, for training and for testing alike
    with pytest.warns(UserWarning, match=r"structure\(s\) \[0, 1.*hold a model's predictions"):
        model.score(frames)
    with pytest.warns(UserWarning, match="written by kernelpot predict"):
        assert main(["eval", str(model_path), str(predicted)]) == 0


def _fit_with_config(cli_files, capsys, name, text, *options):
    """Run ``kernelpot fit`` on the training file with a config; the model and stdout."""
    from kernelpot import load

    config = cli_files / f"{name}.toml"
    config.write_text(text)
    model_path = cli_files / f"{name}.npz"
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model_path), "--config",
                 str(config), "--quiet", *options]) == 0
    return load(model_path), capsys.readouterr().out


def test_fit_exact_with_one_signal_std_per_element(cli_files, capsys):
    model, out = _fit_with_config(
        cli_files, capsys, "per_element", 'method = "exact"\nsignal_per_element = true\n'
        'n_restarts = 0\ndescriptor.n_max = 3\ndescriptor.l_max = 2\n')
    assert model.method_ == "exact" and set(model.signal_std_) == {"H", "C", "O"}
    assert "signal std H " in out and ", O " in out
    assert "method='auto'" not in out  # the method was given: nothing chose it


def test_fit_with_a_two_body_term_from_the_config(cli_files, capsys):
    from kernelpot import TwoBody

    model, out = _fit_with_config(
        cli_files, capsys, "two_body", 'n_restarts = 0\ndescriptor.n_max = 3\n'
        'descriptor.l_max = 2\ntwo_body.r_cut = 3.5\n"two_body.n_basis" = 6\n',
        "--n-sparse", "30")
    assert isinstance(model.two_body_, TwoBody)
    assert (model.two_body_.r_cut, model.two_body_.n_basis) == (3.5, 6)
    assert model.two_body.prior_std == TwoBody().prior_std  # unset keys keep defaults
    assert f"prior std {model.two_body_.prior_std:.3g}" in out
    config = cli_files / "two_body.toml"
    model_path = cli_files / "two_body.npz"
    config.write_text('two_body.no_such = 1\n')
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model_path), "--config",
                 str(config), "--quiet"]) == 1
    assert "no_such" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["fit", "missing.xyz", "-o", "m.npz"], "no such file"),
    (["eval", "missing.npz", "x.xyz"], "no such file"),
])
def test_fit_and_eval_errors(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_says_when_the_stds_are_far_from_the_errors_size():
    from kernelpot.cli._common import _size_note

    errors, zero = np.array([1.0, -1.0, 1.0, -1.0]), np.zeros(4)
    assert _size_note(errors, zero, np.ones(4), "force") == \
        "RMS z-score 1.00 (1 for stds the size of the errors)"
    wide = _size_note(errors, zero, 10 * np.ones(4), "force")
    assert "RMS z-score 0.10" in wide and "force stds are about 10× wider than the errors" \
        in wide and "--recalibrate" in wide
    assert "energy stds are about 4× narrower than" in _size_note(errors, zero,
                                                                  np.full(4, 0.25), "energy")
    assert _size_note(zero, zero, np.ones(4), "energy").startswith("RMS z-score 0.00 (1 for")
    # between: remarked on, more softly (a new user's stresses on other arrangements, 1.43)
    somewhat = _size_note(errors, zero, np.full(4, 0.7), "stress")
    assert "RMS z-score 1.43" in somewhat and "stress stds are somewhat narrower than the " \
        "errors on these structures (1.43×)" in somewhat and "another arrangement" in somewhat
    safe = _size_note(errors, zero, np.full(4, 1.5), "force")
    assert "somewhat wider than the errors on these structures (1.5×)" in safe \
        and "safe side" in safe and "another arrangement" not in safe
    for inside in (0.8, 1.25):  # RMS z-scores 1.25 and 0.8: no remark
        assert _size_note(errors, zero, np.full(4, inside), "force").endswith("the errors)")


def test_fit_names_no_element_factors_where_the_map_has_none():
    from types import SimpleNamespace

    from kernelpot.cli._common import _element_factor_text

    assert _element_factor_text(SimpleNamespace(element_scales=lambda: {})) == ""
    assert _element_factor_text(SimpleNamespace(element_scales=lambda: {8: 1.2, 1: 0.9})) \
        == " (its force stds scaled per element: H ×0.9, O ×1.2)"


def test_eval_gives_each_elements_rms_z_score_where_there_are_two():
    from kernelpot.cli._common import _element_z_scores

    f = [np.array([[1.0, -1.0, 1.0], [2.0, 0.0, 0.0]])]
    ref = [np.zeros((2, 3))]
    # the O atom's last two components are zero in both (as a crystal's symmetry fixes
    # them, the last with a zero std): not counted, as kernelpot eval's coverage leaves
    # them out
    std = [np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])]
    assert _element_z_scores(f, ref, std, [np.array([1, 8])]) == \
        "; per element RMS z-score H 1.00, O 2.00"
    assert _element_z_scores(f, ref, std, [np.array([29, 29])]) == ""
    assert _element_z_scores(f, ref, std, None) == ""


def test_eval_prints_the_spearman_exactly_right_stds_would_give():
    from kernelpot import metrics
    from kernelpot.cli._common import _expected_spearman

    rng = np.random.default_rng(3)
    stds = [rng.uniform(0.01, 0.2, (40, 3)), rng.uniform(0.01, 0.2, (25, 3))]
    expected = metrics.expected_spearman([np.concatenate(stds)], n_draws=20, random_state=0)
    assert f"would give about {expected:.2f};" in _expected_spearman(stds)
    assert 0.0 < expected < 1.0
    stds[1][3] = 0.0  # a perfect crystal's zero std: nothing to draw from, nothing said
    assert _expected_spearman(stds) == ""


def test_fit_and_eval_name_an_empty_file_and_nan_positions(tmp_path, ethanol_frames, capsys):
    from ase.io import write

    (tmp_path / "empty.xyz").write_text("")
    write(tmp_path / "nan.xyz", ethanol_frames[:1])  # its only structure: "no label" before
    text = (tmp_path / "nan.xyz").read_text().splitlines()
    text[2] = text[2].split()[0] + " nan nan nan " + " ".join(text[2].split()[4:])
    (tmp_path / "nan.xyz").write_text("\n".join(text) + "\n")
    for argv, message in (
            (["fit", str(tmp_path / "empty.xyz"), "-o", str(tmp_path / "m.npz")], "is empty"),
            (["fit", str(tmp_path / "nan.xyz"), "-o", str(tmp_path / "m.npz")],
             "structure 0: positions must be finite; atoms [0] have NaN")):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_fit_on_energies_alone_reports_no_force_noise(tmp_path, ethanol_frames, capsys):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for atoms in ethanol_frames[:8]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy())
        frames.append(copy)
    write(tmp_path / "energies.xyz", frames)
    assert _fit(tmp_path, tmp_path / "energies.xyz", tmp_path / "m.npz",
                "--no-train-eval") == 0
    out = capsys.readouterr().out
    assert "meV/√atom" in out and "no force labels" in out and "forces 50" not in out
    # evaluated on them, the missing force labels are said, not silently left out (and
    # the structures are named as the training ones)
    assert main(["eval", str(tmp_path / "m.npz"), str(tmp_path / "energies.xyz")]) == 0
    out = capsys.readouterr().out
    assert "training (fitted on these): no reference forces in these structures: their " \
        "errors are not computed" in out and "(8 structures)" in out
    assert "training (fitted on these) energies (8 structures)" in out
    assert "note: every structure in" in out


def test_fit_rejects_unlabelled_frames_and_bad_config(tmp_path, ethanol_frames, capsys):
    from ase.io import write

    bare = [a.copy() for a in ethanol_frames[:3]]  # copies drop the labels
    write(tmp_path / "bare.xyz", bare)
    assert main(["fit", str(tmp_path / "bare.xyz"), "-o", str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert "carries an energy or forces" in err and len(err.strip().splitlines()) == 1
    write(tmp_path / "train.xyz", ethanol_frames[:3])
    (tmp_path / "bad.toml").write_text("[optimizer]\nmaxiter = 4\n")
    assert main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                 "--config", str(tmp_path / "bad.toml")]) == 1
    assert "flat table" in capsys.readouterr().err
    # every unknown key at once, with the valid names (not the estimator's repr)
    (tmp_path / "unknown.toml").write_text("no_such_parameter = 1\nalso_bad = 2\n"
                                          "descriptor.n_maxx = 3\nn_restarts = 0\n")
    assert main(["fit", str(tmp_path / "train.xyz"), "-o", str(tmp_path / "m.npz"),
                 "--config", str(tmp_path / "unknown.toml")]) == 1
    err = capsys.readouterr().err
    assert "unknown keys no_such_parameter, also_bad, descriptor.n_maxx" in err
    assert "; descriptor: descriptor." in err and "descriptor.l_max" in err
    assert "estimator: " in err and "n_restarts" in err
    assert "species=[" not in err and len(err.strip().splitlines()) == 1


def test_model_file_that_is_not_ours(tmp_path, ethanol_frames, capsys):
    from ase.io import write

    fake = tmp_path / "fake.npz"
    np.savez(fake, x=np.zeros(3))
    write(tmp_path / "test.xyz", ethanol_frames[:2])
    assert main(["predict", str(fake), str(tmp_path / "test.xyz"), "-o",
                 str(tmp_path / "out.xyz")]) == 1
    err = capsys.readouterr().err
    assert "not a kernelpot model" in err and len(err.strip().splitlines()) == 1


def test_eval_recalibrate_writes_the_factors(cli_files, capsys, ethanol_frames):
    from ase.io import write

    from kernelpot import load

    model_path = cli_files / "model_rc.npz"
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model_path), "--n-sparse",
                 "30", "--quiet"]) == 0
    write(cli_files / "valid.xyz", ethanol_frames[30:38])
    fitted_scale = load(model_path).std_scale_  # the fit's own (LOSO) calibration
    out_path = cli_files / "calibrated.npz"
    capsys.readouterr()
    assert main(["eval", str(model_path), str(cli_files / "test.xyz"), "--recalibrate",
                 str(cli_files / "valid.xyz"), "-o", str(out_path)]) == 0
    out = capsys.readouterr().out
    assert "std calibration fitted" in out and "before recalibration" in out
    calibrated = load(out_path)
    expected = load(model_path).calibrate(read_frames(cli_files / "valid.xyz"))
    assert calibrated.std_scale_ == pytest.approx(expected.std_scale_)
    assert load(model_path).std_scale_ == fitted_scale  # the fitted file is left alone
    assert main(["eval", str(model_path), str(cli_files / "test.xyz"), "-o", "x.npz"]) == 1
    assert "--output only goes with --recalibrate" in capsys.readouterr().err


def read_frames(path):
    from ase.io import read

    return read(path, ":")


def test_learning_curve_table_and_plot(cli_files, capsys):
    plot = cli_files / "lc.png"
    config = cli_files / "lc.toml"
    config.write_text('n_restarts = 0\n"descriptor.n_max" = 3\n"descriptor.l_max" = 2\n')
    assert main(["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                 "--sizes", "3,6,12", "--repeats", "2", "--config", str(config), "--plot",
                 str(plot)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("3 ", "6 ", "12")]
    assert [row[0] for row in rows] == ["3", "6", "12"]
    force_mae = [float(row[1]) for row in rows]
    assert force_mae[2] < force_mae[0]  # more data, smaller error
    assert [row[-1] for row in rows] == ["exact"] * 3  # what method "auto" chose per size
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # uncertainty-grown subsets with the exact model
    assert main(["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                 "--sizes", "4,8", "--strategy", "variance", "--initial", "3", "--method",
                 "exact", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "by uncertainty selection (variance) from 3 random structures" in out
    assert [line.split()[0] for line in out.splitlines()
            if line.strip()[:2] in ("4 ", "8 ")] == ["4", "8"]
    assert main(["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                 "--sizes", "4,8", "--strategy", "variance", "--initial", "5"]) == 1
    assert "initial must be an int between 1 and the smallest size 4" in \
        capsys.readouterr().err
    assert main(["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                 "--sizes", "3,x"]) == 1
    assert "--sizes must be comma-separated integers" in capsys.readouterr().err
    assert main(["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                 "--sizes", "3,500"]) == 1
    assert "sizes must be ints between 1 and 12 (the training structures); got [3, 500]" \
        in capsys.readouterr().err


def test_md_plain_and_on_the_fly(tmp_path, capsys):
    from ase.io import read, write

    from kernelpot import load

    model_path = _copper_model(tmp_path, seed=21)
    traj = tmp_path / "traj.extxyz"
    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "20",
                 "--temperature", "300", "--timestep", "2", "--interval", "5", "-o",
                 str(traj)]) == 0
    out = capsys.readouterr().out
    assert "20 Langevin (300.0 K) steps" in out and "wrote 5 frames" in out
    # beside the final temperature, the mean over the run's second half (steps 10-20)
    assert re.search(r"final temperature \d+ K, mean \d+ K over steps 10–20 \(the run's "
                     r"second half\)", out), out
    assert "step      20" not in out  # a status line every 100 steps by default
    # the out-of-training check says it ran, also when no step passed it
    assert "; none of 5 shown steps beyond the training data (no atom's force std" in out
    frames = read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert frames[0].arrays["forces_std"].shape == (32, 3)
    # the stds, computed at the recorded steps only, are the model's for those structures:
    # total under the names kernelpot predict writes, the epistemic part beside
    model = load(model_path)
    for std_type, suffix in (("total", ""), ("epistemic", "_epistemic")):
        forces, forces_std = model.predict_forces(frames, return_std=True, std_type=std_type)
        _, energy_std = model.predict(frames, return_std=True, std_type=std_type)
        for k, frame in enumerate(frames):  # extxyz keeps 8 decimals
            np.testing.assert_allclose(frame.arrays[f"forces_std{suffix}"], forces_std[k],
                                       rtol=1e-5)
            np.testing.assert_allclose(frame.arrays["model_forces"], forces[k], atol=1e-6)
            assert frame.info[f"energy_std{suffix}"] == pytest.approx(energy_std[k], rel=1e-5)
    assert np.all(frames[1].arrays["forces_std"] > frames[1].arrays["forces_std_epistemic"])
    assert re.search(r"largest epistemic force-component std [\d.]+ meV/Å at step \d+", out)
    assert "model_energy" in frames[0].info and frames[0].calc is None  # not labels
    assert "warning" not in out + capsys.readouterr().err  # none beyond the training data
    # far hotter than the training cells: said once at the first such step, counted after
    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "20",
                 "--temperature", "6000", "--timestep", "5", "--interval", "5"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"^warning: at step \d+ atom \d+'s epistemic force std, [\d.e+]+ meV/Å, "
                     r"is [\d.]+ times the largest of the structures the std was calibrated "
                     r"on \([\d.]+ meV/Å\)", captured.err)
    assert captured.err.count("warning: at step") == 1
    assert re.search(r"; \d of 5 shown steps beyond the training data", captured.out)

    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "15",
                 "--temperature", "600", "--reference", "emt", "--threshold", "1e-4",
                 "--train", str(tmp_path / "train.xyz"), "--directory",
                 str(tmp_path / "otf"), "--interval", "7", "--critical-factor", "none"]) == 0
    out = capsys.readouterr().out
    largest = re.search(r"largest gated force-component std ([\d.e+-]+) meV/Å at step (\d+) "
                        r"\(threshold there 0.100 meV/Å\)", out)
    # over every step the learner logged, not only the recorded frames (every 10 steps)
    import json

    log = [json.loads(line) for line in (tmp_path / "otf" / "otf_log.jsonl").open()]
    top = max(log, key=lambda record: record["max_force_std"])
    assert float(largest.group(1)) == pytest.approx(1e3 * top["max_force_std"], rel=2e-3)
    assert int(largest.group(2)) == top["step"]
    # four small cells: method "auto" fitted the exact GP, and chooses it again on --train
    assert load(model_path).method_ == "exact"
    lines = out.splitlines()
    assert "cu.npz on" in lines[0] and "incremental model, method='auto'" in lines[0]
    assert lines[1].startswith("each reference call refits the exact model")
    assert lines[1].endswith("(it becomes the sparse model once past the exact_* limits)")
    second = lines[2]
    assert load(tmp_path / "otf" / "model.npz").method_ == "exact"
    assert second.startswith("on-the-fly MD: steps 0 to 15")  # the learner's lines on stdout
    assert "reference call 1 | model error rms" in out
    # the first call is announced before it runs (a slow reference is not a silent wait),
    # and each call's line splits its time between the reference and the update
    assert len(re.findall(r"step \d+: calling the reference \(EMT\) on 32 atoms, the first "
                          r"call of this run \(from step 0\)", out)) == 1
    assert re.search(r"\| reference [\d.]+ s \+ update [\d.]+ s, total", out)
    calls = int(out.split(" emt calls")[0].split()[-1])
    # every 10 steps at most (min_interval, --critical-factor none) over 15 steps
    assert 1 <= calls <= 2
    assert len(read(tmp_path / "otf" / "labelled.extxyz", ":")) == 4 + calls
    # a --train file other than the model's training set: said
    write(tmp_path / "two.xyz", read(tmp_path / "train.xyz", ":2"))
    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "1",
                 "--temperature", "300", "--reference", "emt", "--train",
                 str(tmp_path / "two.xyz"), "--directory", str(tmp_path / "otf2")]) == 0
    assert re.search(r"note: .*cu.npz was fitted on 4 structures, .*two.xyz holds 2",
                     capsys.readouterr().out)
    # labels of another method (EMT's energies 3 eV per atom higher): the first call stops
    from ase.calculators.singlepoint import SinglePointCalculator

    shifted = read(tmp_path / "train.xyz", ":")
    for atoms in shifted:
        atoms.calc = SinglePointCalculator(
            atoms, energy=atoms.get_potential_energy() + 3.0 * len(atoms),
            forces=atoms.get_forces())
    write(tmp_path / "other.xyz", shifted)
    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "25",
                 "--temperature", "600", "--reference", "emt", "--threshold", "1e-4",
                 "--train", str(tmp_path / "other.xyz"), "--directory",
                 str(tmp_path / "otf3")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: the on-the-fly run stopped: at step \d+ the reference's energy"
                     r".* by [23][.\d]* eV per atom .*EMT here.* --resume", err)
    assert "warning: OnTheFlyLearner: the run stopped" not in err  # said once
    assert err.count("run stopped") == 1 and "ERROR kernelpot" not in err
    assert "with a larger --max-energy-gap, or none" in err
    resume = ["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "12",
              "--temperature", "600", "--reference", "emt", "--directory",
              str(tmp_path / "otf3"), "--resume"]
    assert main(resume) == 1  # resumed, the saved gap stops it again at the same frame
    assert "the on-the-fly run stopped" in capsys.readouterr().err
    assert main([*resume, "--max-energy-gap", "none"]) == 0  # replaced: it goes on
    assert re.search(r"\d+ emt calls", capsys.readouterr().out)
    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "12",
                 "--temperature", "600", "--reference", "emt", "--threshold", "1e-4",
                 "--train", str(tmp_path / "other.xyz"), "--max-energy-gap", "none",
                 "--directory", str(tmp_path / "otf4")]) == 0  # the check off: it learns
    with pytest.raises(SystemExit):
        main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "1",
              "--temperature", "600", "--max-energy-gap", "-1"])
    assert "must be a number of eV per atom above 0 or 'none'" in capsys.readouterr().err

    assert main(["md", str(model_path), str(tmp_path / "start.xyz"), "--steps", "5",
                 "--temperature", "300", "--reference", "emt"]) == 1
    assert "--reference needs --train" in capsys.readouterr().err


def test_recalibrate_keeps_the_training_state(tmp_path, ethanol_frames, small_soap, capsys):
    from ase.io import write

    from kernelpot import SparseGPPotential, load

    model = SparseGPPotential(small_soap, incremental=True, optimize=False,
                              random_state=0, method="sparse").fit(ethanol_frames[:5])
    model.save(tmp_path / "inc.npz", training_state=True)
    write(tmp_path / "valid.xyz", ethanol_frames[20:24])
    write(tmp_path / "test.xyz", ethanol_frames[24:26])
    assert main(["eval", str(tmp_path / "inc.npz"), str(tmp_path / "test.xyz"),
                 "--recalibrate", str(tmp_path / "valid.xyz")]) == 0
    reloaded = load(tmp_path / "inc.npz")
    assert reloaded.std_scale_ is not None and reloaded.posterior_.keeps_training_data


def test_output_paths_are_checked_before_any_work(cli_files, tmp_path, capsys):
    missing = tmp_path / "missing" / "model.npz"
    start = time.perf_counter()
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(missing)]) == 1
    assert time.perf_counter() - start < 5  # refused before reading and fitting
    err = capsys.readouterr().err
    assert f"the directory {missing.parent} does not exist" in err
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    model = cli_files / "model.npz"
    if not model.exists():
        assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model), "--quiet"]) == 0
    for argv in (["eval", str(model), str(cli_files / "test.xyz"), "--plot", str(missing)],
                 ["predict", str(model), str(cli_files / "test.xyz"), "-o", str(missing)],
                 ["md", str(model), str(cli_files / "test.xyz"), "--steps", "5",
                  "--temperature", "300", "-o", str(missing)],
                 ["learning-curve", str(cli_files / "train.xyz"), str(cli_files / "test.xyz"),
                  "--sizes", "5", "--plot", str(missing)]):
        assert main(argv) == 1, argv
        assert "does not exist" in capsys.readouterr().err


def test_fit_can_skip_the_training_evaluation(cli_files, tmp_path, capsys):
    assert _fit(tmp_path, cli_files / "train.xyz", tmp_path / "m.npz", "--no-train-eval") == 0
    out = capsys.readouterr().out
    assert "training (fitted on these)" not in out and "leave-one-structure-out" in out
    assert (tmp_path / "m.npz").exists()


def test_md_without_stds_and_with_status_lines(cli_files, tmp_path, capsys):
    from ase.io import read

    model = tmp_path / "m.npz"
    assert _fit(tmp_path, cli_files / "train.xyz", model, "--no-train-eval") == 0
    capsys.readouterr()
    traj = tmp_path / "traj.xyz"
    assert main(["md", str(model), str(cli_files / "test.xyz"), "--steps", "6",
                 "--temperature", "300", "--interval", "3", "--no-std", "--status-every",
                 "3", "-o", str(traj)]) == 0
    out = capsys.readouterr().out.splitlines()
    status = [line for line in out if line.startswith("step")]
    assert [line.split()[1] for line in status] == ["3", "6"]
    assert "force std" not in "\n".join(out)
    frames = read(traj, ":")
    # the total energy per atom (what NVE conserves): the recorded step 6's
    last = frames[-1]
    total = (last.info["model_energy"] + last.get_kinetic_energy()) / len(last)
    assert re.search(r"\| E (-?[\d.]+) eV/atom \|", status[-1]).group(1) == f"{total:.5f}"
    assert "forces_std" not in frames[0].arrays and "model_forces" in frames[0].arrays
    assert main(["md", str(model), str(cli_files / "test.xyz"), "--steps", "6",
                 "--temperature", "300", "--no-std", "--reference", "emt", "--train",
                 str(cli_files / "train.xyz")]) == 1
    assert "--no-std does not go with --reference" in capsys.readouterr().err


def test_md_counts_steps_with_pairs_closer_than_any_training_pair(tmp_path, capsys):
    """Plain MD (also --no-std) warns of the first pair more than 5 % closer than any
    training pair of its elements, counts such steps in its summary and records each
    frame's contact ratio."""
    import warnings

    from ase.io import read, write
    from helpers import emt_copper_frames, pressed_pair

    model = _copper_model(tmp_path, 3)
    train = emt_copper_frames(4, seed=3, rattle=0.08)  # what _copper_model fitted on
    pressed, _ = pressed_pair(train, 0.85)
    write(tmp_path / "pressed.xyz", pressed)
    capsys.readouterr()
    for start, closer in (("start.xyz", False), ("pressed.xyz", True)):
        traj = tmp_path / f"{start}.traj.xyz"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["md", str(model), str(tmp_path / start), "--steps", "4",
                         "--temperature", "5", "--timestep", "0.1", "--interval", "2",
                         "--no-std", "--quiet", "-o", str(traj)]) == 0
        said = [str(w.message) for w in caught if "extrapolates there" in str(w.message)]
        captured = capsys.readouterr()
        ratios = [frame.info["contact_ratio"] for frame in read(traj, ":")]
        assert len(ratios) == 3
        if not closer:
            assert "closer than any training" not in captured.out and not said
            assert min(ratios) >= 0.95
            continue
        assert max(ratios) == pytest.approx(0.85, abs=0.01)
        assert len(said) == 1 and "closer than any training Cu–Cu pair" in said[0]
        assert ("5 of 5 structures (the start and each step) with a pair more than 5 % "
                "closer than any training pair of its elements (first at step 0; closest "
                "Cu–Cu 1") in captured.out
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "2",
                 "--temperature", "5", "--contact-margin", "0.1"]) == 1
    assert "--contact-margin goes with a new --reference run" in capsys.readouterr().err
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "2",
                 "--temperature", "5", "--critical-factor", "3"]) == 1
    assert "--critical-factor goes with --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["md", str(model), str(tmp_path / "start.xyz"), "--reference", "emt",
              "--critical-factor", "0.5"])
    assert "must be a factor of at least 1 or 'none'" in capsys.readouterr().err
    # kernelpot eval says which test structures hold such a pair, and their error apart;
    # kernelpot predict records each structure's ratio
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    labelled = []
    for atoms in (train[0].copy(), pressed.copy()):
        atoms.calc = SinglePointCalculator(atoms, energy=EMT().get_potential_energy(atoms),
                                           forces=EMT().get_forces(atoms))
        labelled.append(atoms)
    write(tmp_path / "test.xyz", labelled)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["eval", str(model), str(tmp_path / "test.xyz")]) == 0
        out = capsys.readouterr().out
        assert ("1 of 2 test structures hold a pair more than 5 % closer than any training "
                "pair of its elements (the closest: structure 1, Cu–Cu 15.0 % closer): the "
                "model extrapolates there; force MAE there") in out
        write(tmp_path / "near.xyz", labelled[:1])  # and says so when none does
        assert main(["eval", str(model), str(tmp_path / "near.xyz")]) == 0
        assert re.search(r"no test structure holds a pair (more than 5 % )?closer than any "
                         r"training pair of its elements", capsys.readouterr().out)
        assert main(["predict", str(model), str(tmp_path / "test.xyz"), "-o",
                     str(tmp_path / "pred.xyz")]) == 0
    ratios = [a.info["contact_ratio"] for a in read(tmp_path / "pred.xyz", ":")]
    assert ratios[0] >= 0.95 and ratios[1] == pytest.approx(0.85, abs=1e-3)


def test_info_describes_a_model_file(cli_files, tmp_path, capsys):
    from kernelpot import load
    from kernelpot.io import FORMAT_VERSION

    model = tmp_path / "m.npz"
    assert _fit(tmp_path, cli_files / "train.xyz", model, "--no-train-eval",
                config="n_restarts = 0\nforce_noise = 0.07\n") == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    fitted = load(model)
    assert f"format version {FORMAT_VERSION}, written by kernelpot" in out
    assert "species H C O" in out and "SOAP(" in out and "NormalizedDotProduct" in out
    assert f"force noise σ_F {1e3 * fitted.force_noise_:.3g} meV/Å" in out
    kind = "inducing" if fitted.method_ == "sparse" else "training"
    assert "12 structures" in out and \
        f"{kind} environments {sum(fitted.n_inducing_.values())}" in out
    assert "leave-one-structure-out" in out and "jackknife+ intervals" in out
    assert "stress:" not in out  # molecules: no stress map to describe
    assert "force_noise=0.07" in out and "n_restarts=0" in out
    lower, upper = fitted._calibration().fitted_range("forces")
    assert fitted.std_scale_["forces_atom_exponent"] != 1.0  # so the exponent's range shows
    assert (f"(over raw stds {1e3 * np.sqrt(lower):.3g}–{1e3 * np.sqrt(upper):.3g} "
            "meV/Å, linear beyond)") in out
    assert main(["info", str(cli_files / "train.xyz")]) == 1
    assert "is not a kernelpot model file" in capsys.readouterr().err


def test_md_npt_on_the_fly_labels_the_reference_stress(tmp_path, capsys):
    """A new user's NPT run learned no stress: --label-stress is on with --ensemble npt."""
    import json

    from ase.calculators.emt import EMT
    from ase.io import read, write
    from helpers import emt_strained_cells

    train = emt_strained_cells(4, seed=2)  # 8-atom cells with EMT stresses
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "start.xyz", train[0])
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf",
                "--r-cut", "4.0", "--method", "sparse") == 0
    run = ["md", str(model), str(tmp_path / "start.xyz"), "--steps", "4", "--temperature",
           "300", "--timestep", "2", "--reference", "emt", "--train",
           str(tmp_path / "train.xyz"), "--threshold", "1e-4", "--min-interval", "2"]
    assert main([*run, "--ensemble", "npt", "--pdamp", "100", "--pressure", "5",
                 "--directory", str(tmp_path / "npt")]) == 0
    settings = json.loads((tmp_path / "npt" / "learner.json").read_text())
    assert settings["init"]["label_stress"] is True
    called = read(tmp_path / "npt" / "labelled.extxyz", ":")[len(train):]
    assert called
    for frame in called:  # the reference's stress, labelled
        np.testing.assert_allclose(frame.get_stress(), EMT().get_stress(frame), atol=1e-6)
    assert main([*run, "--directory", str(tmp_path / "nvt")]) == 0  # Langevin: off
    assert json.loads((tmp_path / "nvt" / "learner.json").read_text())[
        "init"]["label_stress"] is False
    capsys.readouterr()
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "2",
                 "--temperature", "300", "--label-stress"]) == 1
    assert "--label-stress goes with a new --reference run" in capsys.readouterr().err


def test_md_ensembles_and_restart(tmp_path, capsys):
    from ase.io import read, write

    from kernelpot import load

    # the sparse model: the exact one of four cells (what method "auto" fits) drove the
    # 20 GPa run below to NaN positions (its analytic stress is right: test_stress.py)
    model = _copper_model(tmp_path, 3, "--method", "sparse")
    start = read(tmp_path / "start.xyz")
    start.info["config_type"] = "Elastic"  # MD frames are not of the start's type
    start.info["temperature_K"] = 651.0  # of the start alone: not of any MD frame
    start.info["charge"] = 0  # of the system: kept
    start.arrays["REF_forces"] = np.ones((len(start), 3))
    write(tmp_path / "start.xyz", start)
    run = ["md", str(model), str(tmp_path / "start.xyz"), "--steps", "4", "--temperature",
           "300", "--interval", "2", "--timestep", "2"]
    assert main([*run, "--ensemble", "nve", "-o", str(tmp_path / "nve.xyz")]) == 0
    said = capsys.readouterr().out
    assert "4 NVE (velocity Verlet, initial velocities at 300.0 K) steps" in said
    assert "note: the starting structure's config_type, temperature_K, REF_forces describe " \
        "that frame" in said
    nve = read(tmp_path / "nve.xyz", ":")
    assert all("config_type" not in a.info and "temperature_K" not in a.info
               and "REF_forces" not in a.arrays and a.info["charge"] == 0 for a in nve)
    energies = [a.info["model_energy"] + a.get_kinetic_energy() for a in nve]
    assert np.ptp(energies) < 0.02  # NVE keeps the total energy (32 atoms, 2 fs)
    volumes = {}
    for pressure in ("20", "-2"):  # squeezed and stretched, a fast barostat
        out = tmp_path / f"npt{pressure}.xyz"
        assert main([*run, "--ensemble", "npt", "--pressure", pressure, "--pdamp", "100",
                     "--steps", "20", "-o", str(out)]) == 0
        said = capsys.readouterr().out
        assert f"NPT (MTK, 300.0 K, {float(pressure)} GPa)" in said
        last = read(out, index=-1)
        volumes[pressure] = last.get_volume()
        ratio = float(re.search(r"\(the run's second half\), volume [\d.]+ Å³ \(([\d.]+) × "
                                r"the start's\)", said).group(1))
        assert ratio == pytest.approx(last.get_volume()
                                      / read(tmp_path / "start.xyz").get_volume(), abs=1e-3)
        # the model's stress of the recorded cell, as the barostat saw it
        np.testing.assert_allclose(last.info["model_stress"],
                                   load(model).predict_stress([last])[0], atol=1e-6)
    assert volumes["20"] < read(tmp_path / "start.xyz").get_volume() < volumes["-2"]
    assert "model_stress" not in nve[0].info  # NVE computes no stress
    # restart: the last frame with its velocities, step numbers continued
    assert main(["md", str(model), str(tmp_path / "nve.xyz"), "--restart", "--steps", "4",
                 "--temperature", "300", "--interval", "2", "--timestep", "2", "--ensemble",
                 "nve", "-o", str(tmp_path / "more.xyz")]) == 0
    more = read(tmp_path / "more.xyz", ":")
    assert [a.info["step"] for a in more] == [6, 8]
    total = [a.info["model_energy"] + a.get_kinetic_energy() for a in more]
    assert abs(total[0] - energies[-1]) < 0.02  # continued, not re-thermalised
    # the restart frame's stds are not carried into frames that computed none
    capsys.readouterr()
    assert main(["md", str(model), str(tmp_path / "nve.xyz"), "--restart", "--steps", "2",
                 "--temperature", "300", "--interval", "1", "--no-std", "-o",
                 str(tmp_path / "plain.xyz")]) == 0
    assert "force std" not in capsys.readouterr().out
    # nor into those of a new run started from the trajectory's first frame
    assert main(["md", str(model), str(tmp_path / "nve.xyz"), "--steps", "2",
                 "--temperature", "300", "--interval", "1", "--no-std", "-o",
                 str(tmp_path / "fresh.xyz")]) == 0
    for name in ("plain.xyz", "fresh.xyz"):
        assert all("forces_std" not in a.arrays and "forces_std_epistemic" not in a.arrays
                   and "energy_std_epistemic" not in a.info and "energy_std" not in a.info
                   for a in read(tmp_path / name, ":")), name
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--restart", "--steps", "2",
                 "--temperature", "300"]) == 1
    assert "carries no velocities" in capsys.readouterr().err
    assert main([*run, "--friction", "0"]) == 1
    assert "--friction" in capsys.readouterr().err


def test_fit_refuses_atoms_on_top_of_each_other_unless_allowed(tmp_path, ethanol_frames,
                                                                capsys):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = [a.copy() for a in ethanol_frames[:4]]
    for frame, original in zip(frames, ethanol_frames[:4], strict=True):
        frame.calc = original.calc
    stacked = frames[1].copy()
    stacked.positions[4] = stacked.positions[0]
    stacked.calc = SinglePointCalculator(stacked, energy=0.0, forces=np.zeros((9, 3)))
    frames[1] = stacked
    write(tmp_path / "train.xyz", frames)
    assert _fit(tmp_path, tmp_path / "train.xyz", tmp_path / "m.npz", "--no-train-eval") == 1
    err = capsys.readouterr().err
    assert "structure 1: atoms" in err and "(kernelpot fit: --min-distance 0)" in err
    assert _fit(tmp_path, tmp_path / "train.xyz", tmp_path / "m.npz", "--no-train-eval",
                "--min-distance", "0") == 0  # accepted on request


def test_warnings_show_as_one_line_unless_debugging():
    import warnings

    from kernelpot.cli import _one_line_warnings

    plain = warnings.formatwarning("the std is raw", UserWarning, "/x/fit.py", 38)
    with _one_line_warnings("fit", debug=False):
        assert warnings.formatwarning("the std is raw", UserWarning, "/x/fit.py", 38) == \
            "kernelpot fit: warning: the std is raw\n"
    assert warnings.formatwarning("the std is raw", UserWarning, "/x/fit.py", 38) == plain
    with _one_line_warnings("fit", debug=True):  # --debug: where it came from
        assert "/x/fit.py:38" in warnings.formatwarning("w", UserWarning, "/x/fit.py", 38)


def test_eval_names_the_file_with_non_finite_labels(cli_files, tmp_path, capsys):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import read, write

    model = tmp_path / "m.npz"
    assert _fit(tmp_path, cli_files / "train.xyz", model, "--no-train-eval",
                "--method", "sparse") == 0
    frames = read(cli_files / "test.xyz", ":2")
    forces = frames[1].get_forces()
    forces[0, 0] = np.nan
    frames[1].calc = SinglePointCalculator(frames[1], energy=frames[1].get_potential_energy(),
                                           forces=forces)
    write(tmp_path / "nan.xyz", frames)
    capsys.readouterr()
    assert main(["eval", str(model), str(tmp_path / "nan.xyz")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"kernelpot eval: error: {tmp_path / 'nan.xyz'}: structure 1 has non-finite " \
                  "forces"


def test_md_reference_keeps_a_per_element_exact_model_exact(tmp_path, capsys):
    from ase.io import write
    from helpers import emt_copper_frames

    from kernelpot import load

    train = emt_copper_frames(3, seed=4, rattle=0.08)
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "start.xyz", train[0])
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf", "--r-cut",
                "4.0", "--no-train-eval",
                config="n_restarts = 0\nsignal_per_element = true\n") == 0
    assert load(model).method_ == "exact"  # signal_per_element asks for it
    capsys.readouterr()
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "3",
                 "--temperature", "300", "--reference", "emt", "--train",
                 str(tmp_path / "train.xyz"), "--directory", str(tmp_path / "otf")]) == 0
    assert "incremental model, method='auto'" in capsys.readouterr().out
    checkpoint = load(tmp_path / "otf" / "model.npz")
    assert checkpoint.method_ == "exact" and isinstance(checkpoint.signal_std_, dict)


def test_fit_takes_the_kernel_from_the_config(tmp_path, capsys):
    from ase.io import write
    from helpers import emt_copper_frames

    from kernelpot import load
    from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential, Sum

    write(tmp_path / "train.xyz", emt_copper_frames(3, seed=4, rattle=0.08))
    model = tmp_path / "cu.npz"
    options = ("--descriptor", "acsf", "--r-cut", "4.0", "--no-train-eval")
    config = 'n_restarts = 0\nkernel.kind = "NormalizedDotProduct+SquaredExponential"\n'
    assert _fit(tmp_path, tmp_path / "train.xyz", model, *options, config=config) == 0
    kernel = load(model).kernel_
    assert isinstance(kernel, Sum) and isinstance(kernel.k1, NormalizedDotProduct)
    assert isinstance(kernel.k2, Scaled) and kernel.k2.scale == 0.1
    assert isinstance(kernel.k2.kernel, SquaredExponential)
    assert kernel.k2.kernel.length_scale > 0  # twice the measured median distance
    config = ('n_restarts = 0\nkernel.kind = "SquaredExponential"\n'
              'kernel.length_scale = 3.5\n')
    assert _fit(tmp_path, tmp_path / "train.xyz", model, *options, config=config) == 0
    assert load(model).kernel_.length_scale == 3.5
    capsys.readouterr()
    for config, message in [
            ('kernel = "NormalizedDotProduct(2)"\n', "name the kernel with kernel.kind"),
            ('kernel.kind = "Matern"\n', "kernel.kind must be one of"),
            ('kernel.kind = "SquaredExponential"\nkernel.ell = 2\n',
             "unknown key kernel.ell. Valid keys: kernel.kind, kernel.zeta")]:
        assert _fit(tmp_path, tmp_path / "train.xyz", model, *options, config=config) == 1
        assert message in capsys.readouterr().err


def test_fit_saves_an_incremental_model_with_its_training_state(tmp_path, capsys):
    from ase.io import write
    from helpers import emt_copper_frames

    from kernelpot import load

    write(tmp_path / "train.xyz", emt_copper_frames(3, seed=4, rattle=0.08))
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf", "--r-cut",
                "4.0", "--no-train-eval", "--method", "sparse",
                config="n_restarts = 0\nincremental = true\n") == 0
    assert load(model).posterior_.keeps_training_data  # update can go on from the file
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    assert "training state kept" in capsys.readouterr().out


def test_md_reference_resumes_an_interrupted_run(tmp_path, capsys):
    """--resume continues the run in --directory from its checkpoint to its step count;
    the trajectory is written as the run goes and appended to; the step log keeps one
    record per step."""
    import json

    from ase.io import read
    from helpers import emt_copper_frames

    from kernelpot import OnTheFlyLearner

    train = emt_copper_frames(3, seed=4, rattle=0.08)
    from ase.io import write
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "start.xyz", train[0])
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf", "--r-cut",
                "4.0", "--no-train-eval", "--method", "sparse",
                config="n_restarts = 0\n") == 0
    otf, traj = tmp_path / "otf", tmp_path / "traj.extxyz"
    common = ["--temperature", "300", "--reference", "emt", "--directory", str(otf),
              "--interval", "2", "-o", str(traj), "--threshold", "1e-4",
              "--min-interval", "4"]
    new_run = [*common, "--critical-factor", "3"]  # no std triples: min_interval apart
    stop = OnTheFlyLearner._after_step

    def interrupted(self):  # the run is killed at step 11 (the last checkpoint: step 8)
        if self._dynamics.nsteps == 11:
            raise KeyboardInterrupt
        stop(self)

    OnTheFlyLearner._after_step = interrupted
    try:
        assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "12",
                     "--train", str(tmp_path / "train.xyz"), *new_run]) == 130
    finally:
        OnTheFlyLearner._after_step = stop
    err = capsys.readouterr().err  # says where the run can be continued from
    assert "interrupted at step 11; its last checkpoint (step 8) is in" in err
    assert "the same command with --resume continues it" in err
    assert [f.info["step"] for f in read(traj, ":")] == [0, 2, 4, 6, 8, 10]  # kept
    logged = [json.loads(line)["step"] for line in
              (otf / "otf_log.jsonl").read_text().splitlines()]
    assert logged[-1] == 10  # steps 9 and 10 ran after the checkpoint
    capsys.readouterr()
    for options, message in [
            (["--resume", "--restart"], "does not go with --restart"),
            (["--resume", "--directory", str(tmp_path / "none")], "holds no on-the-fly"),
            (["--min-interval", "0"], "--min-interval must be >= 1"),
            # the interrupted run's dynamics, or refused (a new user's resume at another
            # temperature and time step went on in the same files)
            (["--resume", "--temperature", "500", "--timestep", "2"],
             "ran with --timestep 1 fs (asked: 2), --temperature 300 K (asked: 500): give the "
             "interrupted run's options"),
            (["--resume", "--ensemble", "nve"], "ran Langevin, this command asks for "
                                                "VelocityVerlet")]:
        assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "12",
                     *common, *options]) == 1
        assert message in capsys.readouterr().err
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "12",
                 "--train", str(tmp_path / "train.xyz"), *new_run]) == 1
    assert "holds a previous on-the-fly run: continue it with --resume" in \
        capsys.readouterr().err
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "12", "--resume",
                 *common]) == 0
    out = capsys.readouterr().out
    assert "12 Langevin" not in out and " steps of 1.0 fs" in out
    steps = [json.loads(line)["step"] for line in
             (otf / "otf_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # no step logged twice
    assert [f.info["step"] for f in read(traj, ":")] == [0, 2, 4, 6, 8, 10, 12]  # nor twice
    # the run's --critical-factor was kept (the default, none, not put in its place)
    settings = json.loads((otf / "learner.json").read_text())
    assert settings["init"]["critical_factor"] == 3.0
    # a finished run: said so, nothing run or written
    log = (otf / "otf_log.jsonl").read_text()
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "12", "--resume",
                 *common]) == 0
    out = capsys.readouterr().out
    assert "is complete (step 12 of 12): nothing to resume; its model is" in out
    assert "a larger --steps (counted from its start at step 0) runs it further" in out
    assert "Langevin" not in out and (otf / "otf_log.jsonl").read_text() == log
    # --steps counts from the run's start: shorter than what ran is refused, longer
    # extends the finished run (a new user could not take a finished run further)
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "8", "--resume",
                 *common]) == 1
    assert "has reached step 12: --steps 8 would end it before that" in \
        capsys.readouterr().err
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "16", "--resume",
                 *common]) == 0
    assert "resuming the on-the-fly run in" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in
             (otf / "otf_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 16
    assert [f.info["step"] for f in read(traj, ":")] == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert json.loads((otf / "learner.json").read_text())["target_steps"] == 16


def test_fit_and_info_give_their_advice_in_command_line_terms(cli_files, capsys):
    """A new user was told to "set method='exact'" and "restore_training" by commands."""
    config = cli_files / "limits.toml"
    config.write_text('n_restarts = 0\nexact_time_limit = 0.001\ndescriptor.n_max = 3\n'
                      'descriptor.l_max = 2\n')
    model = cli_files / "limited.npz"
    assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model), "--config",
                 str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "method='auto' chose 'sparse'" in out
    assert "to fit it anyway, pass --method exact, or raise exact_time_limit in a --config " \
           "file" in out
    assert "set method=" not in out
    assert main(["info", str(model)]) == 0
    assert "12 structures (training state not kept: kernelpot md --reference takes them " \
           "with --train; in Python, restore_training before update)" in \
           capsys.readouterr().out


def test_fit_with_a_baseline_from_the_config(cli_files, capsys):
    from kernelpot import ZBL, Coulomb

    model, out = _fit_with_config(
        cli_files, capsys, "zbl", 'n_restarts = 0\ndescriptor.n_max = 3\n'
        'descriptor.l_max = 2\nbaseline.kind = "ZBL"\nbaseline.r_inner = 0.5\n'
        'baseline.r_cut = 0.9\n',
        "--n-sparse", "30")
    assert isinstance(model.baseline_, ZBL) and model.baseline_.r_cut == 0.9
    assert "baseline: ZBL(r_cut=0.9, r_inner=0.5)" in out
    model, _ = _fit_with_config(
        cli_files, capsys, "coulomb", 'n_restarts = 0\ndescriptor.n_max = 3\n'
        'descriptor.l_max = 2\nbaseline.kind = "Coulomb"\n'
        'baseline.charges = {H = 0.4, C = -0.2, O = -0.6}\n', "--n-sparse", "30")
    assert isinstance(model.baseline_, Coulomb)
    assert model.baseline_.charges == {"H": 0.4, "C": -0.2, "O": -0.6}
    config = cli_files / "bad_baseline.toml"
    model_path = cli_files / "bad_baseline.npz"
    for text, message in (('baseline.kind = "Morse"\n', "baseline.kind must be one of"),
                          ('baseline.kind = "ZBL"\nbaseline.sigma = 1.0\n',
                           "unknown key baseline.sigma for a ZBL baseline"),
                          ('baseline.kind = "ZBL"\nbaseline.r_cut = -1.0\n',
                           "ZBL: r_cut must be a finite number > 0")):
        config.write_text(text)
        assert main(["fit", str(cli_files / "train.xyz"), "-o", str(model_path), "--config",
                     str(config), "--quiet"]) == 1
        assert message in capsys.readouterr().err


def test_fit_learns_noise_scales_per_configuration_type(tmp_path, capsys):
    from ase.io import write
    from helpers import emt_strained_cells

    from kernelpot import load

    frames = emt_strained_cells(12, seed=3)  # 6 of each type: enough for their scales
    for k, atoms in enumerate(frames):
        atoms.info["config_type"] = "strained" if k % 2 else "bulk"
    write(tmp_path / "typed.xyz", frames)
    model = tmp_path / "typed.npz"
    path = tmp_path / "quick.toml"
    path.write_text('n_restarts = 0\nmethod = "exact"\ndescriptor.n_max = 3\n'
                    'descriptor.l_max = 2\n')
    assert main(["fit", str(tmp_path / "typed.xyz"), "-o", str(model), "--config", str(path),
                 "--config-type-noise", "--no-train-eval"]) == 0
    out = capsys.readouterr().out
    assert "noise scales per configuration type: bulk E×" in out
    assert load(model).get_params()["config_type_noise"] is True
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "noise scales per configuration type: bulk E×" in out and "; strained E×" in out


def test_eval_leaves_the_force_components_a_crystals_symmetry_fixes_out_of_the_coverage(
        tmp_path, capsys):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from kernelpot import load, metrics

    model = _copper_model(tmp_path, 3)
    perfect = []
    for strain in (0.01, -0.02):  # homogeneous strain: fcc keeps every atom an inversion centre
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                      stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        perfect.append(atoms)
    assert np.abs(perfect[0].get_forces()).max() < 1e-12
    predicted = load(model).predict_forces(perfect)
    assert metrics.fixed_components(predicted, [a.get_forces() for a in perfect]).all()
    rattled = read_frames(tmp_path / "train.xyz")[1:3]
    write(tmp_path / "test.xyz", perfect + rattled)
    assert main(["eval", str(model), str(tmp_path / "test.xyz")]) == 0
    out = capsys.readouterr().out
    n_fixed = 3 * sum(len(a) for a in perfect)
    n_all = n_fixed + 3 * sum(len(a) for a in rattled)
    assert f"({n_fixed} of {n_all} components, zero in both the reference and the " \
        "prediction" in out
    # the stress line too: a cubic cell under normal strain has no shear stress
    assert re.search(r"stress \(2 cells\).*within 2 \(6 of 12 components, zero in both",
                     out)
    write(tmp_path / "perfect.xyz", perfect)
    assert main(["eval", str(model), str(tmp_path / "perfect.xyz")]) == 0
    assert "nothing to check the stds on" in capsys.readouterr().out


def test_md_resume_from_the_first_checkpoint_writes_step_0_once(tmp_path, capsys):
    """Interrupted before any reference call (the only checkpoint: step 0), the resumed
    run writes step 0 again: the trajectory and the step log keep it once."""
    import json

    from ase.io import read, write
    from helpers import emt_copper_frames

    from kernelpot import OnTheFlyLearner

    train = emt_copper_frames(3, seed=4, rattle=0.08)
    write(tmp_path / "train.xyz", train)
    write(tmp_path / "start.xyz", train[0])
    model = tmp_path / "cu.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf", "--r-cut",
                "4.0", "--no-train-eval", "--method", "sparse") == 0
    otf, traj = tmp_path / "otf", tmp_path / "traj.extxyz"
    command = ["md", str(model), str(tmp_path / "start.xyz"), "--steps", "8", "--temperature",
               "300", "--reference", "emt", "--directory", str(otf), "--interval", "2", "-o",
               str(traj), "--threshold", "10", "--train", str(tmp_path / "train.xyz")]
    original = OnTheFlyLearner._after_step

    def interrupted(self):
        if self._dynamics.nsteps == 5:
            raise KeyboardInterrupt
        original(self)

    OnTheFlyLearner._after_step = interrupted
    try:
        assert main(command) == 130
    finally:
        OnTheFlyLearner._after_step = original
    assert "its last checkpoint (step 0)" in capsys.readouterr().err
    assert main([*command, "--resume"]) == 0
    assert "resuming the on-the-fly run in" in capsys.readouterr().out
    assert [f.info["step"] for f in read(traj, ":")] == [0, 2, 4, 6, 8]
    assert [json.loads(line)["step"] for line in
            (otf / "otf_log.jsonl").read_text().splitlines()] == list(range(9))


def test_fit_says_when_a_learned_noise_sits_at_a_bound():
    from kernelpot.cli.fit import _bound_note

    assert _bound_note(1e-4, (1e-4, 1.0)) == " (its lower bound: the labels look noise-free)"
    assert "upper bound" in _bound_note(10.0, (1e-4, 10.0))
    assert _bound_note(0.05, (1e-4, 10.0)) == ""
    assert _bound_note(1e-4, (1e-4, 1.0), learned=False) == " (given)"  # not fitted


def test_fit_gives_the_energy_noise_one_aside(cli_files, tmp_path, capsys):
    """The bound note and the σ_E √N reminder share one parenthesis (a new user's
    three-frame fit printed "(its lower bound: ...) (the noise of ...)")."""
    capsys.readouterr()
    assert _fit(tmp_path, cli_files / "train.xyz", tmp_path / "m.npz", "--no-train-eval",
                config='n_restarts = 0\noptimize = ["signal_std", "force_noise"]\n') == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("learned noise"))
    assert "meV/√atom (given; the noise of an N-atom structure's energy is σ_E √N), " in line



def test_logged_warnings_read_as_the_commands_own_lines():
    import logging

    from kernelpot.cli._common import _CommandFormatter

    formatter = _CommandFormatter("fit")
    warning = logging.LogRecord("kernelpot.estimator", logging.WARNING, __file__, 1,
                                "method='exact': %s", ("slow",), None)
    assert formatter.format(warning) == "kernelpot fit: warning: method='exact': slow"
    info = logging.LogRecord("kernelpot.estimator", logging.INFO, __file__, 1, "fitted",
                             (), None)
    assert formatter.format(info) == "INFO kernelpot.estimator: fitted"  # -v keeps the name


def test_training_errors_without_stds_are_the_same_means_in_fewer_passes():
    """kernelpot fit's training-set errors (no coverage printed) skip the stds, and for
    cells with stresses predict energies, forces and stresses in one pass."""
    from helpers import emt_strained_cells

    from kernelpot import SOAP, SparseGPPotential
    from kernelpot.cli._common import _errors

    cells = emt_strained_cells(6, seed=2)
    model = SparseGPPotential(SOAP(["Cu"], 4.0, 3, 2, 0.5), method="sparse", n_sparse=20,
                              random_state=0, n_restarts=0).fit(cells[:4])
    for frames in (cells, cells[:2] + [_without_stress(cells[2])]):
        fast, full = _errors(model, frames, stds=False), _errors(model, frames)
        assert fast["energy_std"] is None and fast["forces_std"] is None
        assert fast["stress_std"] is None
        for key in ("energies", "stress"):
            np.testing.assert_allclose(fast[key], full[key], rtol=1e-10, atol=1e-12)
        for a, b in zip(fast["forces"], full["forces"], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def _without_stress(atoms):
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(),
                                      forces=atoms.get_forces())
    return copy


def test_md_names_a_start_of_unknown_elements_before_refitting(tmp_path, capsys):
    """A new user's Cu start for a Ni model failed only after the refit on --train, and
    left a run directory that a re-run refused."""
    from ase.build import bulk
    from ase.io import write

    model = _copper_model(tmp_path, 5, "--method", "sparse")
    write(tmp_path / "ni.xyz", bulk("Ni", "fcc", 3.52, cubic=True))
    capsys.readouterr()
    assert main(["md", str(model), str(tmp_path / "ni.xyz"), "--steps", "5",
                 "--temperature", "300", "--reference", "EMT",  # choices in any case
                 "--train", str(tmp_path / "train.xyz"),
                 "--directory", str(tmp_path / "run")]) == 1
    captured = capsys.readouterr()
    assert f"the starting structure {tmp_path / 'ni.xyz'} contains elements the model was " \
           "not trained on: ['Ni'] (model: ['Cu'])" in captured.err
    assert "refitting" not in captured.out and not (tmp_path / "run").exists()


def test_fit_on_one_structure_shows_no_leave_one_out_errors(tmp_path, capsys):
    """With one structure, "leave-one-structure-out" errors are the prior's (a new user's
    900 meV/Å beside an energy MAE of 0.00)."""
    from ase.io import write
    from helpers import emt_copper_frames

    write(tmp_path / "one.xyz", emt_copper_frames(1, seed=2, rattle=0.08))
    assert _fit(tmp_path, tmp_path / "one.xyz", tmp_path / "one.npz", "--descriptor",
                "ACSF", "--r-cut", "4.0", "--method", "exact") == 0
    out = capsys.readouterr().out
    assert "one training structure leaves nothing to predict it from" in out
    assert "force MAE" not in out.split("leave-one-structure-out")[1].splitlines()[0]


def test_fit_on_an_md_trajectory_says_its_forces_are_predictions(tmp_path, capsys):
    from ase.build import bulk
    from ase.io import write

    frame = bulk("Cu", "fcc", 3.6, cubic=True)
    frame.info["model_energy"] = -1.0
    frame.arrays["model_forces"] = np.zeros((4, 3))
    write(tmp_path / "traj.extxyz", [frame, frame])
    assert main(["fit", str(tmp_path / "traj.extxyz"), "-o", str(tmp_path / "m.npz")]) == 1
    assert "look like a kernelpot md trajectory, whose model_energy and model_forces are " \
           "the model's predictions" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["exact", "sparse"])
def test_eval_says_when_it_is_given_training_structures(tmp_path, capsys, method):
    """A new user's eval on the training frames blamed "structures unlike the training
    set's" for the stds' size and advised --recalibrate."""
    from ase.io import read, write
    from helpers import emt_copper_frames

    from kernelpot import load
    from kernelpot.cli.evaluate import training_structures

    model_path = _copper_model(tmp_path, 9, "--method", method)
    new = emt_copper_frames(2, seed=31, rattle=0.08)
    train = read(tmp_path / "train.xyz", ":")
    write(tmp_path / "mixed.xyz", [new[0], train[2], new[1]])
    write(tmp_path / "new.xyz", new)
    capsys.readouterr()
    assert main(["eval", str(model_path), str(tmp_path / "train.xyz")]) == 0
    out = capsys.readouterr().out
    assert "note: every structure in" in out and "the errors below are training errors" in out
    assert "training (fitted on these) forces" in out and "calibration" not in out
    assert main(["eval", str(model_path), str(tmp_path / "mixed.xyz")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 of the 3 structures (1) are ones the model was trained on" in out
    assert "test calibration: " in out
    assert main(["eval", str(model_path), str(tmp_path / "new.xyz")]) == 0
    assert "note:" not in capsys.readouterr().out
    model = load(model_path)
    assert training_structures(model, train).all()
    moved = train[0].copy()
    moved.positions[0, 0] += 1e-3  # a structure a thousandth of an Å away is a new one
    assert not training_structures(model, [moved, *new]).any()


def test_eval_compares_the_stds_at_pairs_just_closer_than_any_training_pair(tmp_path, capsys):
    """A pair 3 % closer than any training pair passes the 5 % contact check, yet its atoms
    are where a new user's errors ran to 4-5 stds: eval gives their RMS z-score apart."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write
    from helpers import emt_copper_frames, pressed_pair

    model = _copper_model(tmp_path, 3)
    train = emt_copper_frames(4, seed=3, rattle=0.08)  # what _copper_model fitted on
    frames = [pressed_pair(train, 0.97)[0], *emt_copper_frames(2, seed=40, rattle=0.08)]
    for atoms in frames:
        atoms.calc = SinglePointCalculator(atoms, energy=EMT().get_potential_energy(atoms),
                                           forces=EMT().get_forces(atoms))
    write(tmp_path / "test.xyz", frames)
    capsys.readouterr()
    assert main(["eval", str(model), str(tmp_path / "test.xyz")]) == 0
    out = capsys.readouterr().out
    found = re.search(r"no test structure holds a pair more than 5 % closer than any training "
                      r"pair of its elements \(the closest: 3(\.0)? % closer; the atoms of the "
                      r"(\d) pair\(s\) closer than any training pair: RMS z-score ([\d.]+) of "
                      r"their force errors over the stds, ([\d.]+) for the other atoms", out)
    assert found, out
    assert int(found.group(2)) >= 1
    assert float(found.group(3)) > 0 and float(found.group(4)) > 0


def test_md_names_initial_magnetic_moments_when_xtb_fails(tmp_path, capsys, ethanol_frames):
    """tblite takes a structure's initial magnetic moments as unpaired electrons: a new
    user's Ni start (ase.build.bulk's 0.6 per atom) failed with "number of electrons ...
    not compatible", and the advice "with the reference fixed" said nothing of why."""
    pytest.importorskip("tblite.ase")
    from ase.io import write

    write(tmp_path / "train.xyz", ethanol_frames[:6])
    start = ethanol_frames[6].copy()
    start.set_initial_magnetic_moments(np.full(len(start), 1 / 3))  # 3 unpaired: odd
    write(tmp_path / "start.xyz", start)
    model = tmp_path / "ethanol.npz"
    assert _fit(tmp_path, tmp_path / "train.xyz", model, "--descriptor", "acsf",
                "--method", "sparse") == 0
    capsys.readouterr()
    assert main(["md", str(model), str(tmp_path / "start.xyz"), "--steps", "3",
                 "--temperature", "300", "--timestep", "0.5", "--reference", "xtb",
                 "--train", str(tmp_path / "train.xyz"), "--threshold", "1e-6",
                 "--directory", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the on-the-fly run stopped" in err
    assert "carries initial magnetic moments, 3 in all, which tblite takes as unpaired " \
           "electrons" in err, err


def test_eval_names_a_stress_file_whose_shear_slots_are_in_another_order():
    from kernelpot.cli._common import shear_order_note

    rng = np.random.default_rng(0)
    predicted = rng.normal(0.0, 0.01, (8, 6))  # eV/Å³: shear stresses of about 1.6 GPa
    labels = predicted + rng.normal(0.0, 0.001, predicted.shape)
    assert shear_order_note(predicted, labels) == ""  # ASE's order fits best
    exchanged = labels[:, [0, 1, 2, 4, 3, 5]]  # yz and xz exchanged (mlearn's Si and Ge)
    note = shear_order_note(predicted, exchanged)
    assert "in 8 of 8 cells with a shear stress label" in note \
        and "read as xz yz xy as in ASE's Voigt order" in note
    vasp = labels[:, [0, 1, 2, 5, 3, 4]]  # the file's slots hold xy yz zx
    assert "read as xy yz xz as" in shear_order_note(predicted, vasp)
    # most cells exchanged, a few right (mlearn's elastic cells), whatever their size
    mixed = exchanged.copy()
    mixed[:3] = labels[:3]
    mixed[0, 3:] *= 100.0  # a large shear label the file holds right
    predicted[0, 3:] *= 100.0
    assert "in 5 of 8 cells" in shear_order_note(predicted, mixed)
    mixed[3] = labels[3]  # half the cells: not most
    assert shear_order_note(predicted, mixed) == ""
    # too few cells carry a shear label to tell: nothing said
    few = exchanged.copy()
    few[2:, 3:] = 0.0
    assert shear_order_note(predicted, few) == ""


def test_md_says_when_the_reference_is_cheaper_than_the_models_steps(tmp_path):
    import json

    from kernelpot.cli.md import _cheap_reference_note

    def log(reference_s, step_s, n=30):
        path = tmp_path / f"log_{reference_s}.jsonl"
        records = [{"step": k, "wall_s": k * step_s + (reference_s if k >= 5 else 0.0),
                    "reference_called": k == 5, "reference_s": reference_s if k == 5 else None}
                   for k in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path

    note = _cheap_reference_note(log(0.01, 0.2), "xtb")
    assert note.startswith("note: xtb took 0.01 s per call and the model 0.2 s per step")
    assert _cheap_reference_note(log(5.0, 0.2), "xtb") == ""  # a reference worth learning
    assert _cheap_reference_note(log(0.01, 0.2, n=8), "xtb") == ""  # too few steps to tell
    assert _cheap_reference_note(tmp_path / "missing.jsonl", "xtb") == ""


def test_eval_gives_the_errors_of_each_configuration_type(capsys):
    from ase import Atoms

    from kernelpot.cli.evaluate import print_by_config_type

    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]]) for _ in range(4)]
    for atoms, kind in zip(frames, ["bulk", "surface", "bulk", None], strict=True):
        if kind is not None:
            atoms.info["config_type"] = kind
    forces = [np.full((2, 3), 0.1 * (k + 1)) for k in range(4)]
    err = {"energy_structures": np.array([0, 1, 3]),  # structure 2 has no energy label
           "energies": np.array([0.02, -0.2, 0.0]), "ref_energies": np.zeros(3),
           "energy_std": np.array([0.03, 0.1, 0.01]), "n_atoms": np.array([2, 2, 2]),
           "force_structures": [0, 1, 2, 3], "forces": forces,
           "ref_forces": [np.zeros((2, 3))] * 4,
           "forces_std": [np.full((2, 3), 0.25)] * 4,
           "stress_structures": np.zeros(0, dtype=int)}
    lines = print_by_config_type(frames, err)
    assert all("stress" not in line for line in lines)  # no cell with a stress label
    assert lines == [
        # bulk: energy errors 10 meV/atom (of structure 0 only), forces 0.1 and 0.3
        "  bulk: 2 structures, energy RMSE 10.00 meV/atom (100% within 1 std), force RMSE "
        f"{1e3 * np.sqrt((0.1**2 + 0.3**2) / 2):.1f} meV/Å (50% within 1 std)",
        "  surface: 1 structures, energy RMSE 100.00 meV/atom (0% within 1 std), force RMSE "
        "200.0 meV/Å (100% within 1 std)",
        "  (none): 1 structures, energy RMSE 0.00 meV/atom (100% within 1 std), force RMSE "
        "400.0 meV/Å (0% within 1 std)"]
    assert capsys.readouterr().out.startswith("per configuration type")
    assert print_by_config_type(frames, err, calibration=False)[1] == \
        "  surface: 1 structures, energy RMSE 100.00 meV/atom, force RMSE 200.0 meV/Å"
    # cells with stress labels: structures 1 and 3 (surface, no type), in eV/Å³
    err.update(stress_structures=np.array([1, 3]), stress=np.full((2, 6), 0.01),
               ref_stress=np.zeros((2, 6)))
    lines = print_by_config_type(frames, err, calibration=False)
    assert lines[0].endswith("meV/Å") and lines[1].endswith(
        f"force RMSE 200.0 meV/Å, stress RMSE {1.6021766208:.3f} GPa")
    for atoms in frames:  # one type: nothing to split
        atoms.info["config_type"] = "bulk"
    assert print_by_config_type(frames, err) == []


def test_interval_coverage_counts_inside_and_gives_the_width_per_atom(capsys):
    from ase import Atoms

    from kernelpot.cli.evaluate import print_interval_coverage

    class Stub:  # a model's return_interval outputs, fixed
        interval_kind_ = "validation"

        def predict(self, frames, return_interval):
            assert return_interval == 0.8
            return np.zeros(2), np.array([[-0.1, 0.1], [-1.0, 1.0]])

        def predict_forces(self, frames, return_interval):
            bounds = np.stack([np.full((2, 3), -0.5), np.full((2, 3), 0.5)], axis=-1)
            return [np.zeros((2, 3))], [bounds]

    frames = [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]]), Atoms("H4")]
    err = {"energy_structures": np.array([0, 1]), "ref_energies": np.array([0.2, 0.5]),
           "n_atoms": np.array([2, 4]), "force_structures": [0],
           "ref_forces": [np.array([[0.4, -0.6, 0.0], [0.0, 0.0, 0.1]])]}
    inside = print_interval_coverage(Stub(), frames, err, 0.8)
    # energies: 0.2 outside ±0.1, 0.5 inside ±1; forces: the three components zero in both
    # prediction and reference left out, 0.4 and 0.1 inside ±0.5, -0.6 outside
    assert inside == pytest.approx({"energy": 0.5, "forces": 2 / 3})
    out = capsys.readouterr().out
    # widths per atom: 0.2 / 2 and 2 / 4 eV, mean 300 meV/atom; forces 1 eV/Å
    assert "test 80% intervals (split-conformal from the validation structures of " \
           "calibrate (or --recalibrate): at least 80% for structures like them): 50.0% of " \
           "energies (mean width 300.00 meV/atom); 66.7% of force components (mean width " \
           "1000.0 meV/Å)" in out
