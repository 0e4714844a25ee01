"""Score a model on the MNIST test set.

Import this module only after ``runtime.start()`` has chosen the backend.
"""

from __future__ import annotations

import keras

from . import data
from .loading import load_saved_model
from .model import compile_model
from .predict import check_classifier
from .runtime import Runtime

EVAL_BATCH_SIZE = 500  # evaluation only: larger batches run faster and change no result


def score(model: keras.Model, dataset: data.Dataset) -> tuple[float, float]:
    """``(loss, accuracy)`` of a compiled ``model`` on ``dataset``'s test split."""
    x_test, y_test = data.as_model_input(dataset.x_test), data.one_hot(dataset.y_test)
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=EVAL_BATCH_SIZE, verbose=0)
    return float(loss), float(accuracy)


def evaluate(model_path, data_path=None, runtime: Runtime | None = None, dataset: data.Dataset | None = None) -> dict:
    """Score a saved model on the MNIST test set: ``accuracy``, ``loss`` and what ran it.

    The score is the project's (categorical cross-entropy and accuracy), whatever
    the file's training config says: only the architecture and weights are loaded.
    ``dataset``: the data ``data_path`` names, when the caller has loaded it already.
    """
    model = load_saved_model(model_path, compile=False)
    check_classifier(model, model_path)  # before compiling or loading any data, as predict and report do
    compile_model(model)
    if dataset is None:
        dataset = data.load_dataset(data_path)
    loss, accuracy = score(model, dataset)
    return {"model": str(model_path), "accuracy": accuracy, "loss": loss,
            "test_images": len(dataset.x_test), "backend": keras.backend.backend(),
            **({"device": runtime.device} if runtime else {})}
