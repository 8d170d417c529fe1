"""``kernelpot fit``: fit a potential to labelled structures and save it."""

from __future__ import annotations

import time

from kernelpot import __version__
from kernelpot.cli._common import _build_model, _errors, _print_errors, _read_frames


def _cmd_fit(args) -> int:
    from kernelpot.estimator import format_signal_std

    frames = _read_frames(args.train)
    model = _build_model(args, frames)
    start = time.perf_counter()
    model.fit(frames)
    fit_s = time.perf_counter() - start
    print(f"kernelpot {__version__}: fitted {len(frames)} structures in {fit_s:.1f} s, "
          f"{sum(model.n_inducing_.values())} inducing environments {model.n_inducing_}")
    print(f"learned noise: energy {1e3 * model.energy_noise_:.3g} meV per √atom, forces "
          f"{1e3 * model.force_noise_:.3g} meV/Å; signal std "
          f"{format_signal_std(model.signal_std_)} eV")
    if model.two_body_ is not None:
        print(f"two-body term: r_cut {model.two_body_.r_cut} Å, {model.two_body_.n_basis} "
              f"basis functions, prior std {model.two_body_.prior_std:.3g} × signal std")
    _print_errors("training", _errors(model, frames))
    path = model.save(args.output)
    print(f"wrote {path}")
    return 0
