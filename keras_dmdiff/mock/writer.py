"""Write mock simulations as the exact files of the CAMELS Multifield Dataset.

`write_cmd_files` produces, for a suite S and set X,
`Maps_Mstar_S_X_z=0.00.npy`, `Maps_Mcdm_S_X_z=0.00.npy` (float32,
[num_sims * 15, map_size, map_size]) and `params_X_S.txt`, so the one TFDS
builder path reads mock and real data alike.

Work is split per simulation: each is written to its own shard
`out_dir/.mock_work/<S>_<X>/sim_00012.npz` (temp file + os.replace, so a shard
is either complete or absent), simulations run in parallel processes
("spawn" context), and a killed run restarted with the same arguments skips
the finished shards. The final .npy files are assembled through memory maps
and renamed into place at the end.
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time

import numpy as np

from keras_dmdiff import atomic_files
from keras_dmdiff.mock import suites
from keras_dmdiff.mock.generate import MockSettings, generate_simulation
from keras_dmdiff import LIGHT_IMPORT_VARIABLE

__all__ = ["write_cmd_files", "write_cmd_files_from_fields", "cmd_file_names", "simulation_seed"]

_SHARD_VERSION = 1
_FIELDS = ("Mstar", "Mcdm")


def cmd_file_names(suite, set_name, field_names=_FIELDS):
    """The CMD file names for a suite and set.

    Examples:
        >>> cmd_file_names("SIMBA", "CV")
        {'Mstar': 'Maps_Mstar_SIMBA_CV_z=0.00.npy', 'Mcdm': 'Maps_Mcdm_SIMBA_CV_z=0.00.npy', 'params': 'params_CV_SIMBA.txt'}
    """
    names = {f: f"Maps_{f}_{suite}_{set_name}_z=0.00.npy" for f in field_names}
    names["params"] = f"params_{set_name}_{suite}.txt"
    return names


def simulation_seed(seed, table_seed):
    """Seed of one simulation: SeedSequence([seed, table_seed]).

    The table's own seed column (the CAMELS initial-condition seed) is used
    rather than the row index so that, as in CAMELS, all 1P simulations share
    their initial conditions (seed 67) and differ only by the parameter
    varied, while LH and CV rows all differ.

    Examples:
        >>> simulation_seed(0, 5).entropy
        [0, 5]
    """
    return np.random.SeedSequence([int(seed), int(table_seed)])


def _validate(suite, set_name, num_sims, workers, field_names):
    suites.get_suite(suite)
    if set_name not in suites.SETS:
        raise ValueError(f"Unknown set {set_name!r}; expected one of {list(suites.SETS)}")
    _, params, seeds = suites.load_params(suite, set_name)
    total = len(params)
    if num_sims is None:
        num_sims = total
    if int(num_sims) != num_sims or not 1 <= num_sims <= total:
        raise ValueError(f"num_sims must be an integer in [1, {total}] for {suite} {set_name}, got {num_sims!r}")
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    field_names = tuple(field_names)
    bad = [f for f in field_names if f not in _FIELDS]
    if bad or not field_names or len(set(field_names)) != len(field_names):
        raise ValueError(f"field_names must be distinct names from {_FIELDS}, got {field_names!r}")
    return int(num_sims), params[: int(num_sims)], seeds[: int(num_sims)], field_names


def _suite_constants(suite):
    spec = suites.get_suite(suite)
    constants = {k: v for k, v in vars(spec).items() if isinstance(v, (int, float, str))}
    constants["shmr"] = getattr(spec.shmr, "__name__", str(type(spec.shmr)))
    return constants


def _manifest_matches(path, manifest):
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(manifest))
    except (OSError, ValueError):
        return False


def _shard_ok(path, config):
    try:
        with np.load(path) as f:
            return json.loads(str(f["config"])) == config
    except Exception:  # a truncated or foreign file: recompute it
        return False


def _simulate_to_shard(job):
    """Worker: one simulation -> one shard file (atomic). Returns (index, seconds)."""
    start = time.perf_counter()
    config = job["config"]
    settings = MockSettings(**{field.name: config[field.name] for field in dataclasses.fields(MockSettings)})
    mstar, mcdm = generate_simulation(
        np.asarray(job["params"]), config["suite"], settings, seed=simulation_seed(config["seed"], job["table_seed"])
    )
    path = job["path"]
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, Mstar=mstar, Mcdm=mcdm, params=np.asarray(job["params"]), config=json.dumps(config))
    os.replace(tmp, path)
    return job["index"], time.perf_counter() - start


class _Progress:
    """tqdm if available, else a line on stderr per finished simulation."""

    def __init__(self, total, initial, enabled, desc):
        self.bar = None
        self.enabled = enabled
        self.n, self.total, self.desc = initial, total, desc
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="sim")
        except Exception:  # tqdm missing or broken: plain text
            print(f"{desc}: {initial}/{total} simulations done", file=sys.stderr, flush=True)

    def update(self):
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"{self.desc}: {self.n}/{self.total}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _shard_config(suite, set_name, settings, seed):
    """What a shard's maps depend on: a shard or manifest written with another one is stale."""
    return {
        "version": _SHARD_VERSION,
        "suite": suite,
        "set_name": set_name,
        "grid_size": int(settings.grid_size),
        "map_size": int(settings.map_size),
        "box_size": float(settings.box_size),
        "num_steps": int(settings.num_steps),
        "seed": int(seed),
        "slab_thickness": None if settings.slab_thickness is None else float(settings.slab_thickness),
        "slabs_per_axis": None if settings.slabs_per_axis is None else int(settings.slabs_per_axis),
        "suite_constants": _suite_constants(suite),  # recalibrated constants: new maps
    }


def write_cmd_files(
    out_dir,
    suite,
    set_name="LH",
    num_sims=None,
    settings=None,
    *,
    seed=0,
    workers=1,
    progress=True,
    field_names=("Mstar", "Mcdm"),
    keep_work=False,
):
    """Generate mock simulations and write them as CMD files.

    Args:
        out_dir: output folder (created).
        suite: "IllustrisTNG", "SIMBA" or "Astrid".
        set_name: "LH", "CV" or "1P"; rows come from the real CAMELS table
            (see `suites.load_params` for the 1P mapping).
        num_sims: the first `num_sims` rows of the table (None: all).
        settings: a `MockSettings` (None: CMD's resolution). For a large box
            at CMD resolution, `MockSettings.for_box(100.0)` (grid 512, maps
            1024^2): still 15 maps per simulation (5 slabs of 5 Mpc/h per
            axis, one every box/5).
        seed: global seed; simulation i uses `simulation_seed(seed, table_seed_i)`.
        workers: parallel processes ("spawn"); 1 runs in this process.
        progress: show a progress bar (tqdm, or text if tqdm is missing).
        field_names: which map files to write, from ("Mstar", "Mcdm").
        keep_work: keep the per-simulation shards after assembling.

    Returns:
        dict mapping each field name and "params" to its pathlib.Path.

    Raises:
        ValueError: unknown suite or set, num_sims beyond the table, odd
            grid_size, unknown field names, workers < 1.

    Examples:
        >>> paths = write_cmd_files("/tmp/cmd_mock", "IllustrisTNG", "CV", 1,  # doctest: +SKIP
        ...                         MockSettings(grid_size=16, map_size=32, num_steps=2), progress=False)
        >>> sorted(p.name for p in paths.values())  # doctest: +SKIP
        ['Maps_Mcdm_IllustrisTNG_CV_z=0.00.npy', 'Maps_Mstar_IllustrisTNG_CV_z=0.00.npy', 'params_CV_IllustrisTNG.txt']
    """
    c = MockSettings() if settings is None else settings
    num_sims, params, table_seeds, field_names = _validate(suite, set_name, num_sims, workers, field_names)
    from keras_dmdiff.mock.painting import MapGeometry

    maps_per_sim = MapGeometry(c.box_size, c.map_size, c.slab_thickness, c.slabs_per_axis).num_maps
    out_dir = pathlib.Path(out_dir)
    work = out_dir / ".mock_work" / f"{suite}_{set_name}"
    work.mkdir(parents=True, exist_ok=True)
    config = _shard_config(suite, set_name, c, seed)
    names = cmd_file_names(suite, set_name, field_names)
    manifest_path = out_dir / f".mock_{suite}_{set_name}.json"
    manifest = dict(config, num_sims=num_sims, field_names=list(field_names))
    finished = {field: out_dir / names[field] for field in (*field_names, "params")}
    if _manifest_matches(manifest_path, manifest) and all(path.exists() for path in finished.values()):
        return finished
    shard_paths = [work / f"sim_{i:05d}.npz" for i in range(num_sims)]
    jobs = [
        {"index": i, "path": str(path), "params": params[i].tolist(), "table_seed": int(table_seeds[i]),
         "config": dict(config, index=i)}
        for i, path in enumerate(shard_paths)
        if not _shard_ok(path, dict(config, index=i))
    ]
    bar = _Progress(num_sims, num_sims - len(jobs), progress, f"mock {suite} {set_name}")
    try:
        _run_jobs(jobs, workers, bar)
    finally:
        bar.close()
    manifest_path.unlink(missing_ok=True)
    paths = _assemble(shard_paths, out_dir, names, field_names, maps_per_sim, c.map_size)
    paths["params"] = out_dir / names["params"]
    with atomic_files.replacing(paths["params"]) as temporary:
        np.savetxt(temporary, params, fmt="%.6g")
    atomic_files.write_json(manifest_path, manifest)
    if not keep_work:
        for path in shard_paths:
            path.unlink(missing_ok=True)
        for d in (work, work.parent):
            try:
                d.rmdir()
            except OSError:
                pass
    return paths



def write_cmd_files_from_fields(out_dir, suite, **fields):
    """`write_cmd_files` with the `MockSettings` fields among its keywords (a recipe step, a TFDS build).

    Example:
        >>> write_cmd_files_from_fields("/tmp/cmd_mock", "IllustrisTNG", set_name="CV", num_sims=1,  # doctest: +SKIP
        ...                             grid_size=16, map_size=32, num_steps=2, progress=False)
    """
    names = {field.name for field in dataclasses.fields(MockSettings)}
    settings = MockSettings(**{key: value for key, value in fields.items() if key in names})
    return write_cmd_files(out_dir, suite, settings=settings, **{k: v for k, v in fields.items() if k not in names})


def _run_jobs(jobs, workers, bar):
    """Simulates every job to its shard, here or in `workers` spawned processes."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _simulate_to_shard(job)
            bar.update()
        return
    ctx = multiprocessing.get_context("spawn")
    # Workers need numpy only: spare each the Keras/TensorFlow import of
    # `keras_dmdiff/__init__` (the variable is inherited at spawn).
    previous = os.environ.get(LIGHT_IMPORT_VARIABLE)
    os.environ[LIGHT_IMPORT_VARIABLE] = "1"
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            futures = [pool.submit(_simulate_to_shard, job) for job in jobs]
            for fut in concurrent.futures.as_completed(futures):
                fut.result()
                bar.update()
    finally:
        if previous is None:
            os.environ.pop(LIGHT_IMPORT_VARIABLE, None)
        else:
            os.environ[LIGHT_IMPORT_VARIABLE] = previous


def _assemble(shard_paths, out_dir, names, field_names, maps_per_sim, map_size):
    """Writes each field's .npy from the shards through a memory map, renamed into place when whole."""
    arrays = {}
    for field in field_names:
        tmp = out_dir / (names[field] + ".tmp.npy")
        shape = (len(shard_paths) * maps_per_sim, map_size, map_size)
        arrays[field] = (np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape), tmp)
    for i, path in enumerate(shard_paths):
        with np.load(path) as f:
            for field in field_names:
                arrays[field][0][i * maps_per_sim : (i + 1) * maps_per_sim] = f[field]
    paths = {}
    for field, (mm, tmp) in arrays.items():
        mm.flush()
        del mm
        paths[field] = out_dir / names[field]
        os.replace(tmp, paths[field])
    return paths
