"""The sweep's searcher: Optuna (seeded sampler) wrapped in :class:`CrossedSearch`, which
crosses every sampled point with the grid dimensions and only ever tells Optuna the *final*,
seed-aggregated objective (never a partial result; an early-stopped configuration is told
as PRUNED). Multi-objective searches pass a list of metrics to ``OptunaSearch`` and never
set ``TuneConfig(metric=...)``, which would silently make them single-objective (ray.md)."""
from __future__ import annotations

import pickle
import threading

from ray.tune.search import Searcher

from distfair.config.space import SweepSpec, optuna_distribution


class CrossedSearch(Searcher):
    """Sampled points (from ``inner``, an OptunaSearch, or a single empty point for a grid-only
    search) crossed with ``grid`` points; Optuna sees one trial per sampled point whose value
    is the mean over its grid points of the final objective values (of the grid trials that
    finished; if none did, the point is FAIL when one errored and PRUNED otherwise)."""

    def __init__(self, inner: Searcher | None, grid: list[dict], names: list[str], modes: list[str],
                 max_points: int):
        super().__init__(metric=names if len(names) > 1 else names[0], mode=modes if len(modes) > 1 else modes[0])
        self._inner, self._grid, self._names, self._max_points = inner, grid, names, max_points
        self._queue: list[tuple[str, int]] = []
        self._points: dict[str, dict] = {}
        self._trial_point: dict[str, tuple[str, int]] = {}
        self._n_points = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True       # the objective is fixed by the sweep file, not by TuneConfig

    def suggest(self, trial_id: str):
        if not self._queue:
            if self._n_points >= self._max_points:
                return Searcher.FINISHED
            point_id = f"point{self._n_points}"
            params = {} if self._inner is None else self._inner.suggest(point_id)
            if params is None or params == Searcher.FINISHED:
                return params
            self._n_points += 1
            self._points[point_id] = {"params": params, "pending": set(range(len(self._grid))), "values": {}}
            self._queue = [(point_id, i) for i in range(len(self._grid))]
        point_id, index = self._queue.pop(0)
        self._trial_point[trial_id] = (point_id, index)
        return {**self._points[point_id]["params"], **self._grid[index]}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Progress results never reach Optuna: it only learns seed-aggregated final values."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._trial_point:
            return
        point_id, index = self._trial_point.pop(trial_id)
        point = self._points[point_id]
        final = bool(result) and result.get("final") == 1 and all(result.get(n) is not None for n in self._names)
        point["values"][index] = [float(result[n]) for n in self._names] if final else None
        point.setdefault("errors", set()).update({index} if error else set())
        point["pending"].discard(index)
        if point["pending"] or self._inner is None:
            return
        values = [v for v in point["values"].values() if v is not None]
        if values:
            mean = {n: sum(v[i] for v in values) / len(values) for i, n in enumerate(self._names)}
            self._inner.on_trial_complete(point_id, {**mean, "final": 1})
        else:   # nothing finished: FAIL if any grid trial errored, else PRUNED (stopped early)
            self._inner.on_trial_complete(point_id, None, error=bool(point["errors"]))

    # Tune pickles the searcher (with the Tuner's state, and in every experiment snapshot).
    # Optuna's samplers may hold thread locks (NSGAIISampler does since Optuna 5.1), which no
    # pickler takes: the state goes through :func:`dumps_lock_safe`, where a lock is recreated
    # on load, never pickled, whatever Optuna keeps.
    def __reduce__(self):
        return _crossed_search_from_state, (dumps_lock_safe(self.__dict__),)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            f.write(dumps_lock_safe(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


_LOCK_TYPES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


def dumps_lock_safe(obj) -> bytes:
    """``obj`` pickled (by cloudpickle, as Ray pickles it), with every ``threading.Lock`` and
    ``RLock`` inside it pickled as a new, unlocked lock of the same kind."""
    import io

    from ray import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        def reducer_override(self, o):
            new = _LOCK_TYPES.get(type(o))
            return (new, ()) if new is not None else super().reducer_override(o)

    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


def _crossed_search_from_state(blob: bytes) -> "CrossedSearch":
    searcher = CrossedSearch.__new__(CrossedSearch)
    searcher.__dict__.update(pickle.loads(blob))
    return searcher


def build_searcher(spec: SweepSpec) -> CrossedSearch:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    names = [t.name for t in spec.objective]
    modes = [t.mode for t in spec.objective]
    inner = None
    if spec.sampler != "grid":
        sampler = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                   "random": optuna.samplers.RandomSampler}[spec.sampler](seed=spec.seed)
        space = {d.key: optuna_distribution(d) for d in spec.dims}
        inner = OptunaSearch(space=space, metric=names if len(names) > 1 else names[0],
                             mode=modes if len(modes) > 1 else modes[0], sampler=sampler)
    max_points = 1 if spec.sampler == "grid" else spec.num_samples
    return CrossedSearch(inner, spec.grid_points(), names, modes, max_points)

