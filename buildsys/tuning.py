"""Tuning results on disk: where a target's search lives, its settings, its trials, and the best values found.

```
build-out/tuning/<name>/search.json        the settings the search was started with (tuner, trials, epochs, ...)
build-out/tuning/<name>/best.json          the best hyperparameter values so far, with their score and trial
build-out/tuning/<name>/search/            KerasTuner's own project: oracle.json, trial_*/trial.json, checkpoints
```

KerasTuner reloads its state from its project folder but not the arguments its tuner was built with, so
`search.json` records them: a re-run with other settings is refused instead of silently mixing two searches.
`build --hparams best` and `show --tuning` read these files; nothing here imports TensorFlow or KerasTuner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from buildsys.errors import BuildsysError
from buildsys.store import OutputTree, write_json_atomic
from buildsys.workspace import Target

SEARCH_FILE = "search.json"
BEST_FILE = "best.json"
PROJECT = "search"
TUNERS = ("hyperband", "bayesian", "random")
# What a search's settings mean when they do not say: searches recorded before `tune --strategy` trained each trial
# on one replica, and so does the chief's record, whose trials run on the workers.
UNRECORDED_SETTINGS = {"replicas": 1}


class TuningError(BuildsysError):
    """A search cannot start or resume as asked, or its results are missing."""


def tuning_dir(tree: OutputTree, name: str) -> Path:
    return tree.root / "tuning" / name


def best_hparams(tree: OutputTree, target: Target) -> dict[str, Any]:
    """The best values the last search of `target` recorded.

    Raises:
        TuningError: when the target has not been tuned, saying which command does it.
    """
    path = tuning_dir(tree, target.name) / BEST_FILE
    if not path.exists():
        raise TuningError(
            f"{target.label} has no tuning results in {path.parent}; run: python -m buildsys tune {target.label}"
        )
    return dict(json.loads(path.read_text(encoding="utf-8"))["hparams"])


def record_best(tree: OutputTree, target: Target, trial: dict[str, Any], objective: str) -> None:
    """Writes `best.json` (atomically) from a trial as `list_trials` describes it."""
    write_json_atomic(
        tuning_dir(tree, target.name) / BEST_FILE,
        {
            "label": target.label,
            "objective": objective,
            "score": trial["score"],
            "trial_id": trial["trial_id"],
            "hparams": trial["hparams"],
        },
    )


def check_settings(tree: OutputTree, name: str, settings: dict[str, Any], overwrite: bool) -> bool:
    """Records `settings` for a new search, or checks that a search being resumed was started with them.

    Returns True when an earlier search is resumed.

    Raises:
        TuningError: when a search with other settings exists and `overwrite` is not set.
    """
    folder = tuning_dir(tree, name)
    path = folder / SEARCH_FILE
    if path.exists() and not overwrite:
        previous = {**UNRECORDED_SETTINGS, **json.loads(path.read_text(encoding="utf-8"))}
        settings = {**UNRECORDED_SETTINGS, **settings}
        changed = sorted(key for key in settings.keys() | previous.keys() if settings.get(key) != previous.get(key))
        if changed:
            shown = ", ".join(
                "the definition or its data"
                if key == "definition"
                else f"{key} {previous.get(key)!r} → {settings.get(key)!r}"
                for key in changed
            )
            raise TuningError(
                f"{folder} holds a search started with other settings ({shown}); repeat its settings to resume it, "
                "or pass --overwrite to start over"
            )
        return True
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    write_json_atomic(path, settings)
    return False


def list_trials(tree: OutputTree, name: str) -> list[dict[str, Any]]:
    """Every trial KerasTuner recorded, in trial order: id, status, score, hyperparameter values."""
    trials = []
    for path in sorted((tuning_dir(tree, name) / PROJECT).glob("trial_*/trial.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        values = data.get("hyperparameters", {}).get("values", {})
        trials.append(
            {
                "trial_id": data["trial_id"],
                "status": data.get("status"),
                "score": data.get("score"),
                "hparams": {key: value for key, value in sorted(values.items()) if not key.startswith("tuner/")},
            }
        )
    return sorted(trials, key=lambda trial: int(trial["trial_id"]))
