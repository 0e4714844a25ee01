"""The ``mnist-mb`` command: a thin layer over the library.

It parses flags, chooses the backend and device before anything imports Keras,
then calls one library function per subcommand. Bad input ends with exit
status 2 and one line on stderr; results go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from . import native_logs
from .errors import InputError, one_line
from .predict import INVERT_CHOICES
from .recipes import DEFAULT_RECIPE, PRECISIONS, RECIPES, TARGET_ACCURACY
from .runtime import BACKENDS, DEVICES

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (no usage block), like every other bad input."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"mnist-mb: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto: a GPU when the backend sees one; gpu: fail without one (default: auto)")


# Flags are parsed here and checked by the library function they are handed to, once: the
# command line and a Python caller get the same one-line refusal.
def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _subcommand(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true",
                         help="also show the backends' own start-up messages and third-party warnings")
    return commands.add_parser(name, parents=[verbose], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mnist-mb", description="Train, evaluate, benchmark and use the "
                     "2017 MNIST CNN on TensorFlow or JAX; read and write its Keras 2 files.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    convert = _subcommand(commands, "convert", help="convert an IDX image/label pair to the original CSV format")
    convert.add_argument("images", help="IDX image file (raw or .gz)")
    convert.add_argument("labels", help="IDX label file (raw or .gz)")
    convert.add_argument("-o", "--output", required=True, help="CSV file to write")

    train = _subcommand(commands, "train", help="train the CNN (defaults: the original 2017 recipe)")
    _add_runtime_flags(train)
    train.add_argument("--data", help="folder of IDX files, mnist_train.csv + mnist_test.csv, or mnist.npz; "
                                      "an .npz file; or TRAIN.csv,TEST.csv (default: $MNIST_DATA_DIR, "
                                      "then Keras's cache or download)")
    train.add_argument("--recipe", choices=RECIPES, default=DEFAULT_RECIPE,
                       help="; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()).replace("%", "%%")
                            + f" (default: {DEFAULT_RECIPE})")
    train.add_argument("--epochs", type=_whole_number, help="override the recipe's")
    train.add_argument("--batch-size", type=_whole_number, help="override the recipe's")
    train.add_argument("--learning-rate", type=_number,
                       help="override the recipe's (under a schedule: its peak)")
    train.add_argument("--limit", type=_whole_number, help="train on the first N training images only")
    train.add_argument("--steps-per-execution", type=_whole_number, metavar="N",
                       help="batches per call of the compiled training step (default: 32 on TensorFlow, "
                            "1 on JAX; progress and callbacks update every N batches)")
    train.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="bfloat16: compute in bfloat16 with float32 weights while training (Keras's "
                            "mixed_bfloat16; fast on CPUs with AVX512_BF16 or AMX), then save and score a "
                            "float32 copy (default: float32)")
    train.add_argument("--seed", type=int, help="make the run repeatable on the same backend")
    train.add_argument("--out", default="runs/latest", help="run folder to write, whole or not at all "
                                                            "(default: runs/latest)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing run folder at --out whole (else a non-empty one is refused)")
    train.add_argument("--no-validate", dest="validate", action="store_false",
                       help="skip scoring the test set after each epoch")
    train.add_argument("--legacy-artifacts", action="store_true",
                       help="also write the original's Keras 2 files MNIST_keras_CNN.h5, MNIST_keras_CNN.yaml "
                            "and MNIST_keras_w_CNN.h5 beside model.keras")
    train.add_argument("--checkpoint-dir", help="save the training state here at every epoch end")
    train.add_argument("--resume", action="store_true",
                       help="continue the interrupted run whose state is in --checkpoint-dir")
    train.add_argument("--report", action="store_true", help="also write the report (see: report) into OUT/report")
    parallel = train.add_argument_group("data-parallel training (see docs/gpu-and-distributed.md)")
    parallel.add_argument("--distribute", action="store_true",
                          help="one model replica per visible device of the chosen kind, the global "
                               "--batch-size split across them (TensorFlow: several workers when TF_CONFIG names them)")
    parallel.add_argument("--cpu-devices", type=_whole_number, metavar="N",
                          help="split the host CPU into N logical devices (implies --device cpu)")
    parallel.add_argument("--coordinator", metavar="HOST:PORT",
                          help="JAX multi-process: the address of process 0 (with --num-processes, --process-id)")
    parallel.add_argument("--num-processes", type=_whole_number, metavar="N", help="JAX multi-process: process count")
    parallel.add_argument("--process-id", type=int, metavar="I", help="JAX multi-process: this process, 0..N-1")

    evaluate = _subcommand(commands, "evaluate", help="score a saved model on the MNIST test set (JSON)")
    _add_runtime_flags(evaluate)
    evaluate.add_argument("model", help="model file (.keras, or a Keras 2 full-model .h5)")
    evaluate.add_argument("--data", help="as for train")

    legacy = commands.add_parser("legacy", help="inspect, read and write Keras 2 files (HDF5, YAML, JSON)")
    legacy_commands = legacy.add_subparsers(dest="legacy_command", required=True, metavar="ACTION")
    export = _subcommand(legacy_commands, "export", help="write a model as Keras 2 files (any of --h5, --yaml, "
                                                       "--weights)")
    _add_runtime_flags(export)
    export.add_argument("model", help="model file (.keras, or a Keras 2 full-model .h5)")
    export.add_argument("--h5", help="full model with training config and Adam state, as Keras 2's model.save()")
    export.add_argument("--yaml", help="architecture, as Keras 2's model.to_yaml()")
    export.add_argument("--weights", help="weights only, as Keras 2's model.save_weights()")
    import_ = _subcommand(legacy_commands, "import", help="turn Keras 2 files into a .keras model")
    _add_runtime_flags(import_)
    import_.add_argument("source", help="Keras 2 full-model .h5, or architecture .yaml (with --weights)")
    import_.add_argument("--weights", help="Keras 2 weights .h5 for a .yaml architecture")
    import_.add_argument("--out", required=True, help=".keras model file to write")
    inspect = _subcommand(legacy_commands, "inspect", help="say what a model file is (Keras 2 .h5, weights .h5, "
                                                         ".yaml, .json or .keras) and what loading it restores")
    _add_runtime_flags(inspect)
    inspect.add_argument("file", help="Keras 2 full-model or weights .h5, architecture .yaml or .json, or .keras")
    inspect.add_argument("--json", action="store_true", help="one JSON object instead of the readable page")

    bench = _subcommand(commands, "bench", help="measure training and inference speed of each backend and device "
                                              "(writes results.json, results.md, results.png)")
    bench.add_argument("--quick", action="store_true", help="one batch size and short windows: about 90 s")
    bench.add_argument("--out", default="runs/bench", help="folder to write (default: runs/bench)")
    bench.add_argument("--data", help="as for train")
    bench.add_argument("--batch-sizes", type=_int_list, help="comma-separated (default: 32,128,512; --quick: 128)")
    bench.add_argument("--backends", type=_backend_list, default=BACKENDS,
                       help=f"comma-separated (default: {','.join(BACKENDS)})")

    race = _subcommand(commands, "time-to-accuracy", help="measure the wall seconds each recipe takes to reach "
                                                        f"{TARGET_ACCURACY * 100:.2f} %% test accuracy, per backend")
    race.add_argument("--recipes", type=_recipe_list, default=("fast",),
                      help=f"comma-separated, of {','.join(RECIPES)} (default: fast)")
    race.add_argument("--backends", type=_backend_list, default=BACKENDS,
                      help=f"comma-separated (default: {','.join(BACKENDS)})")
    race.add_argument("--runs", type=_whole_number, default=3, help="runs of each recipe on each backend (default: 3)")
    race.add_argument("--epochs", type=_whole_number, help="override the recipes' (a quick check, not a result)")
    race.add_argument("--limit", type=_whole_number, help="train on the first N images only (a quick check)")
    race.add_argument("--precision", choices=PRECISIONS, default="float32",
                      help="as for train: bfloat16 trains in Keras's mixed_bfloat16 and saves a float32 copy "
                           "(default: float32)")
    race.add_argument("--out", default="runs/time-to-accuracy", help="folder to write (default: runs/time-to-accuracy)")
    race.add_argument("--data", help="as for train")

    doctor = _subcommand(commands, "doctor", help="show what decides speed here: CPU features, each backend's "
                                                  "version, oneDNN, threads, XLA flags and GPUs, and the last bench's "
                                                  "fastest backend")
    doctor.add_argument("--json", action="store_true", help="one JSON object instead of the readable page")
    doctor.add_argument("--backends", type=_backend_list, default=BACKENDS,
                        help=f"comma-separated, the backends to probe (default: {','.join(BACKENDS)})")

    predict = _subcommand(commands, "predict", help="classify digits: image files, CSV rows, IDX or .npy files")
    _add_runtime_flags(predict)
    predict.add_argument("model", help="model file (.keras, or a Keras 2 full-model .h5)")
    predict.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="PNG/JPEG image of one digit (any size); CSV in the original format (label "
                              "column optional); IDX file; .npy array of 28x28 images")
    predict.add_argument("--json", action="store_true", help="one JSON object a line, with all ten probabilities")
    predict.add_argument("--invert", choices=INVERT_CHOICES, default="auto",
                         help="make image files light-on-dark like MNIST; auto: when the border is light "
                              "(default: auto)")

    report = _subcommand(commands, "report", help="draw training curves, the confusion matrix and the "
                                                "misclassified test digits (PNG)")
    _add_runtime_flags(report)
    report.add_argument("target", metavar="RUN_DIR_OR_MODEL", help="a run folder (from train) or a model file")
    report.add_argument("--data", help="as for train: whose test set to score")
    report.add_argument("--out", help="folder to write (default: RUN_DIR/report; for a model file outside "
                                      "a run folder, ./MODEL-report)")
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(_whole_number(part) for part in text.split(","))


def _name_list(kind: str, choices):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {kind} {unknown[0]!r}; choose from {', '.join(choices)}")
        return names

    return parse


_backend_list = _name_list("backend", BACKENDS)
_recipe_list = _name_list("recipe", RECIPES)


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


def _start(args, announce: bool = False):
    """Start the backend; say which, and on what, for a long run (``announce``) or with ``--verbose``.

    Short commands keep stderr for errors: their results name the backend where it matters.
    """
    from .runtime import start

    runtime = start(args.backend, args.device, getattr(args, "cpu_devices", None), _cluster(args))
    if announce or args.verbose:
        print(f"mnist-mb: {runtime.describe()}", file=sys.stderr, flush=True)
    return runtime


def run_convert(args) -> int:
    from .atomic import check_file_target
    from .data import idx_to_csv

    check_file_target(args.output)
    rows = idx_to_csv(args.images, args.labels, args.output)
    print(f"wrote {rows} rows to {args.output}", file=sys.stderr)
    return 0


def run_train(args) -> int:
    from .recipes import TrainConfig

    config = TrainConfig(recipe=args.recipe, epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, limit=args.limit, seed=args.seed,
                         steps_per_execution=args.steps_per_execution,
                         data=args.data, out=args.out, validate=args.validate, distribute=args.distribute,
                         legacy_artifacts=args.legacy_artifacts, checkpoint_dir=args.checkpoint_dir,
                         resume=args.resume, overwrite=args.overwrite, report=args.report,
                         precision=args.precision)
    config.check()  # before the backend starts: a bad flag or an unwritable --out costs no wait
    from . import interrupts

    dataset = _local_data(config.data)  # and bad data
    if config.checkpoint_dir and dataset is not None:  # and a checkpoint that cannot be resumed or overwritten
        from .checkpoint import resolve, resumable_settings

        resolve(config.checkpoint_dir, resumable_settings(config, dataset.limit(config.limit)), config.resume)

    interrupts.set_hint(lambda: _resume_hint(args, config) if config.checkpoint_dir
                        else f"{config.out} was not written")
    runtime = _start(args, announce=True)
    from .training import train

    metrics = train(config, runtime, dataset=dataset)
    where = f"{runtime.backend}/{runtime.device}" + (f" x{metrics['replicas']}" if config.distribute else "")
    if metrics["processes"] > 1:
        where += f", process {metrics['process_index']} of {metrics['processes']}"
    written = (f"wrote {config.out}/model.keras, history.csv, metrics.json" if metrics["process_index"] == 0
               else "process 0 writes the run folder")
    reached = metrics.get("time_to_accuracy", {})
    if reached.get("seconds") is not None:
        print(f"test accuracy {reached['target']:.2%} reached after epoch {reached['epoch']}, "
              f"{reached['seconds']:.0f} s into training", file=sys.stderr)
    if "mixed_precision_test_accuracy" in metrics:
        print(f"trained in {metrics['precision']}: test accuracy {metrics['mixed_precision_test_accuracy']:.4f} "
              "as trained; the float32 copy below is what the run folder holds", file=sys.stderr)
    print(f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f}; "
          f"{metrics['train_images_per_second']:.0f} training images/s on {where}; {written}"
          + (" and the Keras 2 files" if config.legacy_artifacts and metrics["process_index"] == 0 else ""))
    if metrics.get("report"):
        _print_report(metrics["report"])
    return 0


def _resume_hint(args, config) -> str:
    """What a signal's line adds for a run with checkpoints: what is saved, and the exact command that resumes."""
    import shlex

    from .checkpoint import CHECKPOINT_FILE

    words = list(args.argv)
    if "--resume" not in words:
        words.append("--resume")
    saved = "no epoch saved yet"
    try:
        state = json.loads((Path(config.checkpoint_dir) / CHECKPOINT_FILE).read_text())
        saved = f"epoch {int(state['epoch'])} of {config.epochs} saved in {config.checkpoint_dir}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"{saved}; resume with: {shlex.join(['mnist-mb', *words])}"


def _test_data(flag: str | None, model) -> str | None:
    """``--data`` when given; else the data source recorded by the run whose folder holds ``model``."""
    if flag:
        return flag
    from .runs import recorded_data_source

    recorded = recorded_data_source(model)
    if recorded:
        print(f"mnist-mb: test data from {recorded}, as recorded by the run in {Path(model).parent or '.'} "
              "(--data overrides)", file=sys.stderr)
    return recorded


def _local_data(source):
    """The data ``source`` names, loaded before the backend starts so that bad data costs no wait;
    ``None`` when only Keras's download has it."""
    from .data import load_local_dataset

    return load_local_dataset(source)


def run_evaluate(args) -> int:
    from .model_files import check_model_file

    check_model_file(args.model)  # before the backend starts: a bad file costs no wait
    source = _test_data(args.data, args.model)
    dataset = _local_data(source)
    runtime = _start(args)
    from .evaluation import evaluate  # refuses a model that is not a 10-class 28x28 classifier

    print(json.dumps(evaluate(args.model, source, runtime, dataset=dataset)))
    return 0


def run_legacy(args) -> int:
    if args.legacy_command == "inspect":
        from .model_files import check_inspectable

        check_inspectable(args.file)  # before the backend starts: a missing or damaged file costs no wait
        _start(args)
        from .legacy.inspection import format_inspection, inspect_model_file

        report = inspect_model_file(args.file)
        print(json.dumps(report) if args.json else format_inspection(report))
        refusal = report["load"]["architecture"]["note"] or ""
        if refusal.startswith("refused: "):  # Lambda, custom classes, a damaged config: bad input, said once
            raise InputError(args.file, refusal.removeprefix("refused: "))
        return 0
    if args.legacy_command == "export" and not (args.h5 or args.yaml or args.weights):
        raise InputError("legacy export", "name at least one file to write: --h5, --yaml or --weights")
    if args.legacy_command == "import" and not args.out.endswith(".keras"):
        raise InputError(args.out, "--out must name a .keras file")
    from .atomic import check_file_target
    from .model_files import check_legacy_sources, check_model_file

    outputs = [args.out] if args.legacy_command == "import" else [args.h5, args.yaml, args.weights]
    for output in filter(None, outputs):
        check_file_target(output)  # before the backend starts and the model loads
    if args.legacy_command == "export":  # the files as far as no Keras is needed, before the backend starts
        check_model_file(args.model)
    else:
        check_legacy_sources(args.source, args.weights)
    runtime = _start(args)
    from . import legacy
    from .atomic import atomic_path
    from .loading import load_saved_model
    from .predict import describe_shapes

    if args.legacy_command == "export":
        model = load_saved_model(args.model)
        for path in legacy.export_legacy(model, h5=args.h5, yaml_path=args.yaml, weights=args.weights):
            print(f"wrote {path}")
        print(f"the model's {describe_shapes(model)}")
        return 0
    model = legacy.import_legacy(args.source, weights=args.weights)
    with atomic_path(args.out) as tmp:
        model.save(tmp)
    optimizer = getattr(model, "optimizer", None)
    state = f", {type(optimizer).__name__} at step {int(optimizer.iterations)}" if optimizer else ""
    print(f"wrote {args.out} ({model.count_params()} parameters{state}) on {runtime.backend}")
    print(f"the model's {describe_shapes(model)}")
    return 0


def run_bench(args) -> int:
    # No Keras in this process: each backend is measured in a fresh worker process.
    from .atomic import check_folder_target
    from .bench.matrix import BenchConfig, run_benchmarks
    from .bench.report import throughput_table
    from .bench.workers import failed

    check_folder_target(args.out)  # before minutes of measuring
    results = run_benchmarks(BenchConfig(out=args.out, quick=args.quick, data=args.data,
                                         batch_sizes=args.batch_sizes, backends=args.backends))
    print(throughput_table(results["rows"]))
    print(f"wrote {args.out}/results.json, results.md, results.png", file=sys.stderr)
    side = results["side_by_side"]
    return 1 if failed(results["rows"]) or (side and side["status"] != "ok") else 0


def run_time_to_accuracy(args) -> int:
    # No Keras in this process: each run is a fresh worker process.
    from .atomic import check_folder_target
    from .bench.time_to_accuracy import TimeToAccuracyConfig, run, table
    from .bench.workers import failed

    check_folder_target(args.out)  # before the runs

    results = run(TimeToAccuracyConfig(out=args.out, backends=args.backends, recipes=args.recipes, runs=args.runs,
                                       data=args.data, epochs=args.epochs, limit=args.limit,
                                       precision=args.precision))
    print(table(results["summary"]))
    print(f"wrote {args.out}/results.json, results.md", file=sys.stderr)
    return 1 if failed(results["runs"]) else 0


def run_doctor(args) -> int:
    # No Keras in this process: each backend is probed in a fresh worker process.
    from .bench.workers import failed
    from .doctor import format_report, report

    found = report(args.backends, echo=args.verbose)
    print(json.dumps(found) if args.json else format_report(found))
    return 1 if failed(found["backends"].values()) else 0  # a probe that crashed; not a missing backend


def run_predict(args) -> int:
    from .model_files import check_model_file
    from .predict import format_predictions, load_inputs

    images, names = load_inputs(args.inputs, args.invert)  # every input is checked before a backend starts
    check_model_file(args.model)  # and the model file, as far as no Keras is needed
    _start(args)
    from .loading import load_saved_model
    from .predict import check_classifier, predict_digits

    model = load_saved_model(args.model, compile=False)  # predicting needs no optimizer
    check_classifier(model, args.model)
    for line in format_predictions(names, predict_digits(model, images), as_json=args.json):
        print(line)
    return 0


def run_report(args) -> int:
    from .report import check_inputs, write_report

    model, _, _ = check_inputs(args.target, args.out)  # before the backend starts: a bad target costs no wait
    source = _test_data(args.data, model)
    dataset = _local_data(source)
    _start(args)

    _print_report(write_report(args.target, source, args.out, dataset=dataset))
    return 0


def _print_report(summary: dict) -> None:
    print(f"accuracy {summary['accuracy']:.4f} on {summary['test_images']} test digits, "
          f"{summary['mistakes']} misclassified; wrote {', '.join(summary['files'])}")


COMMANDS = {"convert": run_convert, "train": run_train, "evaluate": run_evaluate, "legacy": run_legacy,
            "bench": run_bench, "time-to-accuracy": run_time_to_accuracy, "doctor": run_doctor,
            "predict": run_predict, "report": run_report}


def main(argv=None) -> int:
    command_line = argv is None  # the mnist-mb command itself, not a Python caller's main([...])
    argv = sys.argv[1:] if command_line else list(map(str, argv))
    args = build_parser().parse_args(argv)
    args.argv = argv
    if command_line:  # a process of its own: SIGINT/SIGTERM remove temporaries, say one line, exit 130/143
        from . import interrupts

        interrupts.install()
    if args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # runtime.start would otherwise hide INFO and WARNING
        return _run(args)
    quiet = native_logs.filtered() if native_logs.user_left_log_level() else contextlib.nullcontext()
    with warnings.catch_warnings(), quiet:
        # Dependencies' deprecation and future warnings speak to their own callers, not to the user
        # of a command; --verbose shows them. The project's own warnings stay.
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"mnist_multibackend(\.|$)")
        return _run(args)


def _run(args) -> int:
    try:
        return COMMANDS[args.command](args)
    except InputError as err:
        print(f"mnist-mb: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # e.g. an --out folder that cannot be written: the user's to fix, so one line
        where = err.filename or "file system"
        print(f"mnist-mb: error: {one_line(str(where))}: {one_line(str(err.strerror or err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # raised by code that ran outside interrupts.install()
        print("mnist-mb: interrupted", file=sys.stderr)
        return 130
