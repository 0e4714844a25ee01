"""Resumable training: the whole training state after every epoch, safe against ``kill -9``.

Import this module only after ``runtime.start()`` has chosen the backend.

Keras's ``BackupAndRestore`` callback is the mechanism: at every epoch end it saves
the model's weights with its optimizer's variables, and at the start of ``fit`` it
loads them and makes ``fit`` start from the saved epoch. Its writes are not atomic,
though: it rewrites ``latest.weights.h5`` in place and then ``training_metadata.json``,
so a kill during the first leaves a truncated checkpoint, and a kill between the two
pairs epoch N+1's weights with epoch number N (the resumed run trains that epoch
twice). ``TrainingCheckpoint`` keeps Keras's loading and epoch hand-over but writes
each epoch's weights to a new file and then commits them by atomically replacing
``checkpoint.json``, which names that file and holds what Keras does not keep: every
epoch's logs and training seconds (for ``history.csv``), the random generators' states,
and the settings that a resumed run must share.

This module is the checkpoint folder without Keras: the committed state, read and
checked, and the decision to resume it or refuse the folder (``resolve``), which the
command line makes before a backend starts. The callback that writes and restores it
is ``callbacks.TrainingCheckpoint``.

A resumed run continues with the saved weights, optimizer state, dropout seeds and
Python's and NumPy's generators. On JAX, Keras shuffles the training images with
NumPy's generator, so a resumed seeded run repeats the uninterrupted one exactly
(tested). A seeded TensorFlow run, and any augmented run, is fed by
``feeding.EpochBatches``, whose order and distortions are drawn from the seed and
the epoch number alone, so the resumed run draws what the interrupted one would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

from .errors import InputError, first_line
from .runs import read_record

CHECKPOINT_FILE = "checkpoint.json"
_WEIGHTS_NAME = re.compile(r"epoch-(\d{4,})\.weights\.h5")


def weights_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.weights.h5"


def resumable_settings(config, dataset) -> dict:
    """What a resumed run must share with the interrupted one (the data by content, not by path);
    ``config`` a ``recipes.TrainConfig``, ``dataset`` a ``data.Dataset`` as trained (after ``--limit``)."""
    digest = hashlib.sha256(dataset.x_train.tobytes())
    digest.update(dataset.y_train.tobytes())
    return {"recipe": config.recipe, "epochs": config.epochs, "batch_size": config.batch_size,
            "learning_rate": config.learning_rate, "seed": config.seed, "validate": config.validate,
            "train_images": len(dataset.x_train), "train_data_sha256": digest.hexdigest()[:16]}


@dataclasses.dataclass
class Resumption:
    """What ``resolve`` found: the committed state (``None``: start at epoch 1), and the epochs it holds."""

    state: dict | None = None
    history: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        return self.state["epoch"] if self.state else 0


def resolve(directory, settings: dict, resume: bool) -> Resumption:
    """Read the checkpoint in ``directory`` and decide: continue it (``resume``) or refuse to overwrite it.

    ``settings`` (``resumable_settings``) must be those the checkpoint was saved with.
    Refuses, in one line, a folder that is a file, a damaged checkpoint, an unfinished
    run without ``resume``, other settings, and a weights file this run would overwrite.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(directory, "is not a directory (--checkpoint-dir needs a folder)")
    state_file = directory / CHECKPOINT_FILE
    state = read_state(state_file)
    _refuse_foreign_weights(directory, state, settings.get("epochs", 0))
    if state is None:
        return Resumption()
    done, total = state["epoch"], state["settings"].get("epochs")
    if not resume:
        raise InputError(directory, f"holds the checkpoint of an unfinished run (epoch {done} of "
                                    f"{total} done); add --resume to continue it, or remove the folder "
                                    "to start afresh")
    differences = [f"{key} {state['settings'].get(key)!r} there, {value!r} now"
                   for key, value in settings.items() if state["settings"].get(key) != value]
    if differences:
        raise InputError(state_file, "saved by a run with other settings (" + "; ".join(differences)
                         + "); resume with the same ones")
    return Resumption(state, {key: list(values) for key, values in state["history"].items()},
                      list(state["epoch_seconds"]))


def _refuse_foreign_weights(directory: Path, state: dict | None, epochs: int) -> None:
    """Refuse a folder holding a weights file that this run would overwrite and no checkpoint names.

    ``epoch-N+1`` beside a checkpoint of epoch N is this checkpoint's own, written just before a
    kill that came ahead of its commit: the resumed run writes it again.
    """
    if not directory.is_dir():
        return
    done = state["epoch"] if state else 0
    ours = set(state.get("files", [])) if state else set()
    if state:
        ours |= {state["weights"], weights_name(done + 1)}
    for path in sorted(directory.iterdir()):
        match = _WEIGHTS_NAME.fullmatch(path.name)
        if match and path.name not in ours and done < int(match.group(1)) <= epochs:
            raise InputError(path, "was not written by this folder's checkpoint, and this run would overwrite "
                                   "it; move it away or choose another --checkpoint-dir")


def read_state(path: Path) -> dict | None:
    """The committed checkpoint in ``path`` (``checkpoint.json``), validated; ``None`` when there is none.

    Everything a resumed run reads is checked here, before any training: a bad value ends
    in one line, not in a traceback after the resumed epochs (whose work would be lost).
    """
    if not path.exists() and not path.is_symlink():
        return None
    try:
        state = json.loads(read_record(path), parse_constant=_no_constant)
    except InputError as err:
        raise InputError(path, f"not a readable checkpoint: {err.problem}") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        raise InputError(path, f"not a readable checkpoint ({type(err).__name__}: {first_line(err, 200)})") from None
    problem = _state_problem(state)
    if problem:
        raise InputError(path, f"not a valid checkpoint: {problem}")
    if not (path.parent / state["weights"]).is_file():
        raise InputError(path, f"names {state['weights']}, which is missing from {path.parent}")
    return state


def _no_constant(name):
    raise ValueError(f"{name} is not a number a checkpoint holds")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < 1e300)


def _state_problem(state) -> str | None:
    """What is wrong with a checkpoint's contents, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    missing = [key for key in ("epoch", "weights", "settings", "history", "epoch_seconds", "random")
               if key not in state]
    if missing:
        return f"{', '.join(missing)} missing"
    epoch, settings = state["epoch"], state["settings"]
    if not isinstance(settings, dict):
        return "settings is not an object"
    epochs = settings.get("epochs")
    if not (_is_int(epochs) and 2 <= epochs < 10**6):
        return f"settings.epochs {epochs!r} is not a whole number of epochs above 1"
    if not (_is_int(epoch) and 1 <= epoch < epochs):
        return f"epoch {epoch!r} of {epochs} (a checkpoint is of an unfinished run: 1 <= epoch < {epochs})"
    if state["weights"] != weights_name(epoch):
        return f"weights {state['weights']!r} is not {weights_name(epoch)!r}"
    files = state.get("files", [state["weights"]])
    if not (isinstance(files, list) and all(isinstance(f, str) and _WEIGHTS_NAME.fullmatch(f) for f in files)):
        return "files is not a list of epoch-N.weights.h5 names"
    history, seconds = state["history"], state["epoch_seconds"]
    if not isinstance(history, dict) or not history:
        return "history is not an object of per-epoch values"
    for key, values in history.items():
        if not (isinstance(values, list) and len(values) == epoch and all(map(_is_finite, values))):
            return f"history[{key!r}] is not a list of {epoch} finite numbers"
    if not (isinstance(seconds, list) and len(seconds) == epoch and all(_is_finite(s) and s >= 0 for s in seconds)):
        return f"epoch_seconds is not a list of {epoch} finite numbers of seconds"
    return _random_problem(state["random"])


def _random_problem(saved) -> str | None:
    """What is wrong with the saved generator states, or None (the model's seed count is checked at restore)."""
    if not isinstance(saved, dict):
        return "random is not an object"
    try:
        version, mersenne, gauss = saved["python"]
        if not (_is_int(version) and isinstance(mersenne, list) and len(mersenne) == 625
                and all(_is_int(v) and 0 <= v < 2**32 for v in mersenne[:624]) and _is_int(mersenne[624])
                and 0 <= mersenne[624] <= 624 and (gauss is None or _is_finite(gauss))):
            return "random.python is not a Mersenne Twister state"
        name, keys, position, has_gauss, cached_gauss = saved["numpy"]
        if not (name == "MT19937" and isinstance(keys, list) and len(keys) == 624
                and all(_is_int(k) and 0 <= k < 2**32 for k in keys) and _is_int(position) and 0 <= position <= 624
                and _is_int(has_gauss) and has_gauss in (0, 1) and _is_finite(cached_gauss)):
            return "random.numpy is not a Mersenne Twister state"
        seeds = saved["seed_generators"]
        if not (isinstance(seeds, list) and all(isinstance(s, list) and all(_is_int(v) and abs(v) < 2**63 for v in s)
                                                for s in seeds)):
            return "random.seed_generators is not a list of lists of whole numbers"
    except (KeyError, TypeError, ValueError):
        return "random is not the generators' saved states"
    return None
