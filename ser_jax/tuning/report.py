"""The end of a study: the best trials as a table, parameter importances, history and
importance plots (PNG, matplotlib), and the winner as a config file the train and cv stages
accept (``--config=WORKDIR/tune/best_config.py``)."""

from __future__ import annotations

import io
from pathlib import Path

import ml_collections
import optuna
import pandas as pd
from optuna.trial import TrialState

from ser_jax.core.files import write_bytes_atomic, write_json_atomic
from ser_jax.tuning import space


def best_trials_table(study: optuna.Study, rows: int) -> pd.DataFrame:
    """The best finished trials, best first, with their parameters."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ordered = sorted(complete, key=lambda t: t.value,
                     reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)[:rows]
    return pd.DataFrame([{"trial": t.number, "value": t.value,
                          "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
                          **{f"param_{k}": v for k, v in t.params.items()}} for t in ordered])


def importances(study: optuna.Study) -> dict[str, float] | str:
    """Optuna's parameter importances (its default evaluator, PED-ANOVA in Optuna 5), or why
    they cannot be computed yet."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s): importances need at least 2"
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as error:
        return f"importances unavailable: {error}"


def plot_history(study: optuna.Study, metric: str) -> bytes:
    """Optimisation history (matplotlib): each complete trial's value and the best so far."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    best = [better(values[:i + 1]) for i in range(len(values))]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    axes.scatter(numbers, values, s=14, label="complete trial")
    axes.step(numbers, best, where="post", color="C3", label="best so far")
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    if pruned:
        axes.scatter(pruned, [min(values or [0])] * len(pruned), marker="x", color="gray",
                     label="pruned (placed at the bottom)")
    axes.set_xlabel("trial")
    axes.set_ylabel(metric)
    axes.set_title(f"study {study.study_name!r}: optimisation history")
    axes.legend()
    return _png(figure)


def plot_importances(values: dict[str, float]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(values)[::-1]
    figure, axes = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2), dpi=100)
    axes.barh(names, [values[n] for n in names])
    axes.set_xlabel("importance (optuna.importance, normalized)")
    axes.set_title("parameter importances")
    return _png(figure)


def _png(figure) -> bytes:

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def report(config: ml_collections.ConfigDict, workdir: Path, study: optuna.Study) -> dict:
    """Prints and writes the best-trials table, importances, plots and the best config file."""
    out = workdir / "tune"
    out.mkdir(parents=True, exist_ok=True)
    counts = {state.name: len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                            TrialState.RUNNING, TrialState.WAITING)}
    table = best_trials_table(study, config.tune.best_trials)
    write_bytes_atomic(out / "best_trials.csv", table.to_csv(index=False).encode())
    weights = importances(study)
    write_json_atomic(out / "importances.json", weights if isinstance(weights, dict)
                      else {"unavailable": weights})
    summary: dict = {"study": study.study_name, "metric": config.tune.metric,
                     "direction": study.direction.name.lower(), "trials": counts,
                     "importances": weights}
    print(f"study {study.study_name!r}: " + ", ".join(f"{n} {c}" for n, c in counts.items()
                                                       if c), flush=True)
    if table.empty:
        print("no complete trial yet: no best parameters", flush=True)
        return summary
    write_bytes_atomic(out / "history.png", plot_history(study, config.tune.metric))
    if isinstance(weights, dict):
        write_bytes_atomic(out / "importances.png", plot_importances(weights))
        print("importances: " + ", ".join(f"{k} {v:.3f}" for k, v in weights.items()))
    else:
        print(weights)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    best = study.best_trial
    path = space.write_best_config(out, config, space.dimensions(config), best,
                                   study.study_name, config.tune.metric)
    print(f"best trial {best.number}: {config.tune.metric} {best.value:.4f}; config {path}",
          flush=True)
    summary.update(best_trial=best.number, best_value=best.value, best_params=best.params,
                   best_config=str(path))
    write_json_atomic(out / "summary.json", summary)
    return summary
