"""Calibration of the mock suites against the published CMD moments.

Procedure (what `calibrate_suite` does, and how the constants in
`suites.SUITES` were chosen):

1. Run the N-body (the expensive part, ~10-20 s each at N=128) for the first
   `num_sims` rows of the suite's real LH table, and keep the particles and
   halo catalogues (`nbody_cache`, optionally on disk).
2. Dark matter: for a few values of `dm_eta`, paint the Mcdm maps and keep
   the value whose std of log10(Mcdm) is closest to the published one (the
   mean is fixed by mass conservation and Omega_m; it is reported, not fit).
3. Stars: for each `star_eta` on a grid, find `log_norm` by bisection so that
   the mean of log10(1 + Mstar) matches the published mean; keep the pair
   whose std is closest to the published std.

Repainting is cheap (~1-2 s per simulation), so the search reuses the same
N-body runs and the same random streams: the constants move the moments
smoothly. The numbers found are written into `suites.SUITES` by hand, with
the moments that `measure_moments` gave for them.
"""

import os

import numpy as np

from keras_dmdiff.mock import generate, suites

__all__ = ["nbody_cache", "measure_moments", "calibrate_suite"]


def _seed_for(seed, table_seed):
    return np.random.SeedSequence([int(seed), int(table_seed)])


def nbody_cache(suite, num_sims=6, settings=None, *, set_name="LH", seed=0, cache_dir=None):
    """N-body runs for the first `num_sims` rows of a real CAMELS table.

    Args:
        suite, set_name: which table (see `suites.load_params`).
        num_sims: number of rows.
        settings, seed: as for `write_cmd_files` (a `MockSettings`, None:
            CMD's; the per-simulation seed is derived the same way).
        cache_dir: optional folder to keep the runs as .npz files.

    Returns:
        list of (params, seed_sequence, nbody dict).
    """
    c = generate.MockSettings() if settings is None else settings
    _, params, table_seeds = suites.load_params(suite, set_name)
    runs = []
    for i in range(num_sims):
        ss = _seed_for(seed, table_seeds[i])
        path = None
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            path = os.path.join(cache_dir, f"{suite}_{set_name}_{i:04d}_N{c.grid_size}_s{c.num_steps}_seed{seed}.npz")
        if path and os.path.exists(path):
            with np.load(path) as f:
                nb = {
                    "pos": f["pos"],
                    "density": f["density"],
                    "particle_mass": float(f["particle_mass"]),
                    "halos": {"labels": f["labels"], "counts": f["counts"], "cell_count": f["cell_count"]},
                }
        else:
            nb = generate.run_nbody(params[i], c, seed=ss)
            if path:
                tmp = path + ".tmp.npz"
                np.savez(
                    tmp,
                    pos=nb["pos"],
                    density=nb["density"],
                    particle_mass=nb["particle_mass"],
                    **nb["halos"],
                )
                os.replace(tmp, path)
        runs.append((params[i], ss, nb))
    return runs


def measure_moments(runs, suite, settings=None, *, overrides=None):
    """Pixel moments of the mock maps of cached runs.

    Args:
        runs: output of `nbody_cache`.
        suite: suite name.
        settings: the `MockSettings` of the runs (None: CMD's).
        overrides: `MockSuite` fields to replace while painting.

    Returns:
        dict with `log_mstar` (mean, std) of log10(1 + Mstar), `log_mcdm`
        (mean, std) of log10(Mcdm), `nonzero` fraction of Mstar pixels.
    """
    ls, lc = [], []
    for params, ss, nb in runs:
        ms, mc = generate.paint_simulation(nb, params, suite, settings, seed=ss, suite_overrides=overrides)
        ls.append(np.log10(1.0 + ms.astype(np.float64)))
        lc.append(np.log10(mc.astype(np.float64)))
    ls, lc = np.concatenate(ls), np.concatenate(lc)
    return {
        "log_mstar": (float(ls.mean()), float(ls.std())),
        "log_mcdm": (float(lc.mean()), float(lc.std())),
        "nonzero": float((ls > 0).mean()),
    }


def calibrate_suite(
    suite,
    runs,
    *,
    star_etas=(0.05, 0.1, 0.2),
    dm_etas=None,
    log_norm_range=(-2.0, 2.0),
    iterations=7,
    settings=None,
    verbose=True,
):
    """Search the painting constants of a suite (procedure in the module docstring).

    Args:
        suite: suite name.
        runs: output of `nbody_cache`.
        star_etas: grid of stellar kernel widths to try.
        dm_etas: optional grid of dark-matter kernel widths (None: keep).
        log_norm_range: bisection bracket in dex.
        iterations: bisection steps per star_eta.
        settings: the `MockSettings` of the runs (None: CMD's).

    Returns:
        dict with the chosen `overrides` and their `moments`.
    """
    target = suites.PUBLISHED_MOMENTS[suite]
    overrides = {}
    if dm_etas:
        best = None
        for eta in dm_etas:
            m = measure_moments(runs, suite, settings, overrides={"dm_eta": eta})
            err = abs(m["log_mcdm"][1] - target["log_mcdm"][1])
            if verbose:
                print(f"[{suite}] dm_eta={eta}: log_mcdm={m['log_mcdm']}", flush=True)
            if best is None or err < best[0]:
                best = (err, eta)
        overrides["dm_eta"] = best[1]
    best = None
    for eta in star_etas:
        lo, hi = log_norm_range
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            o = dict(overrides, star_eta=eta, log_norm=mid)
            m = measure_moments(runs, suite, settings, overrides=o)
            if m["log_mstar"][0] < target["log_mstar"][0]:
                lo = mid
            else:
                hi = mid
        err = abs(m["log_mstar"][1] - target["log_mstar"][1]) + abs(m["log_mstar"][0] - target["log_mstar"][0])
        if verbose:
            print(f"[{suite}] star_eta={eta} log_norm={mid:.3f}: {m}", flush=True)
        if best is None or err < best[0]:
            best = (err, o, m)
    return {"overrides": best[1], "moments": best[2]}
