"""``kernelpot learning-curve``: errors and predicted std against training-set size."""

from __future__ import annotations

import numpy as np

from kernelpot import __version__
from kernelpot.cli._common import (
    CLIError,
    _build_model,
    _check_output,
    _progress,
    _read_frames,
)


def _cmd_learning_curve(args) -> int:
    from kernelpot.studies import learning_curve

    try:
        sizes = [int(token) for token in args.sizes.split(",")]
    except ValueError as err:
        raise CLIError(f"--sizes must be comma-separated integers; got {args.sizes!r}") from err
    _check_output(args.plot, "the plot")
    train = _read_frames(args.train)
    test = _read_frames(args.test)
    model = _build_model(args, train)
    model.set_params(verbose=0)
    curve = learning_curve(model, train, test, sizes, repeats=args.repeats,
                           random_state=0 if args.seed is None else args.seed,
                           verbose=_progress(args), strategy=args.strategy,
                           initial=args.initial)
    grown = "at random" if args.strategy == "random" else \
        f"by uncertainty selection ({args.strategy}) from {args.initial} random structures"
    print(f"kernelpot {__version__}: learning curve on {args.test} ({len(test)} structures), "
          f"training sets grown {grown}, {args.repeats} subset(s) per size; mean (min-max) "
          "over subsets")
    header = (f"{'n':>6} {'force MAE meV/Å':>22} {'force RMSE':>11} {'energy MAE meV/atom':>22} "
              f"{'mean std meV/Å':>15} {'fit s':>7} {'method':>7}")
    print(header)
    print("-" * len(header))
    for i, n in enumerate(curve["sizes"]):
        f = 1e3 * curve["force_mae"][i]
        e = 1e3 * curve["energy_mae"][i]
        print(f"{n:>6} {np.nanmean(f):>9.2f} ({np.nanmin(f):.1f}-{np.nanmax(f):.1f})"
              f"{'':>1} {1e3 * np.nanmean(curve['force_rmse'][i]):>11.2f} "
              f"{np.nanmean(e):>9.3f} ({np.nanmin(e):.2f}-{np.nanmax(e):.2f}) "
              f"{1e3 * np.nanmean(curve['force_std'][i]):>15.2f} "
              f"{np.mean(curve['fit_seconds'][i]):>7.1f} "
              f"{'/'.join(sorted(set(curve['method'][i].tolist()))):>7}")
    if args.plot:
        from kernelpot.plotting import plot_learning_curve

        print(f"wrote {plot_learning_curve(curve, args.plot)}")
    return 0
