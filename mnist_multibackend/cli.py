"""The ``mnist-mb`` command: a thin layer over the library.

It parses flags, chooses the backend and device before anything imports Keras,
then calls one library function per subcommand. Bad input ends with exit
status 2 and one line on stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import InputError
from .runtime import BACKENDS, DEVICES

EXIT_BAD_INPUT = 2


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: a GPU when the backend sees one; gpu: fail without one (default: auto)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-mb", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert an IDX image/label pair to the original CSV format")
    convert.add_argument("images", help="IDX image file (raw or .gz)")
    convert.add_argument("labels", help="IDX label file (raw or .gz)")
    convert.add_argument("-o", "--output", required=True, help="CSV file to write")

    train = commands.add_parser("train", help="train the CNN (defaults: the original 2017 recipe)")
    _add_runtime_flags(train)
    train.add_argument("--data", help="folder of IDX files, mnist_train.csv + mnist_test.csv, or mnist.npz; "
                                      "an .npz file; or TRAIN.csv,TEST.csv (default: $MNIST_DATA_DIR, "
                                      "then Keras's cache or download)")
    train.add_argument("--epochs", type=_positive_int, default=12)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--limit", type=_positive_int, help="train on the first N training images only")
    train.add_argument("--seed", type=int, help="make the run repeatable on the same backend")
    train.add_argument("--out", default="runs/latest", help="run folder to write (default: runs/latest)")
    train.add_argument("--no-validate", dest="validate", action="store_false",
                       help="skip scoring the test set after each epoch")
    parallel = train.add_argument_group("data-parallel training (see the README)")
    parallel.add_argument("--distribute", action="store_true",
                          help="one model replica per visible device of the chosen kind, the global "
                               "--batch-size split across them (TensorFlow: several workers when TF_CONFIG names them)")
    parallel.add_argument("--cpu-devices", type=_positive_int, metavar="N",
                          help="split the host CPU into N logical devices (implies --device cpu)")
    parallel.add_argument("--coordinator", metavar="HOST:PORT",
                          help="JAX multi-process: the address of process 0 (with --num-processes, --process-id)")
    parallel.add_argument("--num-processes", type=_positive_int, metavar="N", help="JAX multi-process: process count")
    parallel.add_argument("--process-id", type=int, metavar="I", help="JAX multi-process: this process, 0..N-1")

    evaluate = commands.add_parser("evaluate", help="score a saved model on the MNIST test set (JSON)")
    _add_runtime_flags(evaluate)
    evaluate.add_argument("model", help="model file (.keras)")
    evaluate.add_argument("--data", help="as for train")
    return parser


def _cluster(args):
    """The JAX multi-process flags, all three or none."""
    from .runtime import Cluster

    flags = {"--coordinator": getattr(args, "coordinator", None),
             "--num-processes": getattr(args, "num_processes", None),
             "--process-id": getattr(args, "process_id", None)}
    given = [flag for flag, value in flags.items() if value is not None]
    if not given:
        return None
    if len(given) < len(flags):
        missing = ", ".join(flag for flag in flags if flag not in given)
        raise InputError(given[0], f"multi-process training also needs {missing}")
    if not args.distribute:
        raise InputError(given[0], "multi-process training needs --distribute")
    return Cluster(*flags.values())


def _start(args):
    from .runtime import start

    runtime = start(args.backend, args.device, getattr(args, "cpu_devices", None), _cluster(args))
    print(f"mnist-mb: {runtime.describe()}", file=sys.stderr, flush=True)
    return runtime


def run_convert(args) -> int:
    from .data import idx_to_csv

    rows = idx_to_csv(args.images, args.labels, args.output)
    print(f"wrote {rows} rows to {args.output}", file=sys.stderr)
    return 0


def run_train(args) -> int:
    runtime = _start(args)
    from .training import TrainConfig, train

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
                         data=args.data, out=args.out, validate=args.validate, distribute=args.distribute)
    metrics = train(config, runtime)
    where = f"{runtime.backend}/{runtime.device}" + (f" x{metrics['replicas']}" if config.distribute else "")
    if metrics["processes"] > 1:
        where += f", process {metrics['process_index']} of {metrics['processes']}"
    written = (f"wrote {config.out}/model.keras, history.csv, metrics.json" if metrics["process_index"] == 0
               else "process 0 writes the run folder")
    print(f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f}; "
          f"{metrics['train_images_per_second']:.0f} training images/s on {where}; {written}")
    return 0


def run_evaluate(args) -> int:
    runtime = _start(args)
    from .training import evaluate

    print(json.dumps(evaluate(args.model, args.data, runtime)))
    return 0


COMMANDS = {"convert": run_convert, "train": run_train, "evaluate": run_evaluate}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        print(f"mnist-mb: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
