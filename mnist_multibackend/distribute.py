"""Data-parallel training on each backend's own engine.

Import this module only after ``runtime.start()`` has chosen the backend.

One model replica per device, all in sync: each step's global batch is split
evenly across the replicas, their gradients are averaged, and every replica
applies the same update. JAX does this with ``keras.distribution.DataParallel``
(one jit-compiled program over a device mesh, the batch sharded along it);
TensorFlow with ``tf.distribute.MirroredStrategy`` on one machine and
``tf.distribute.MultiWorkerMirroredStrategy`` across processes, whose cluster
``TF_CONFIG`` describes. (Keras's own TensorFlow distribution code is a
prototype in Keras 3.15 and is not used.)

Batch normalisation uses the statistics of the global batch on both backends:
JAX computes them over the sharded batch as over one array, and TensorFlow's
layers are told to all-reduce them. So a data-parallel run follows the
single-device recipe, up to floating-point summation order and, on
TensorFlow, dropout masks (each replica draws its own for its share of the
batch; JAX draws one mask for the global batch and shards it).

Use (``training.train`` does this; a benchmark can too, per replica count)::

    replicas = data_parallel(runtime)  # all devices of runtime.device; count=1 for the engine on one
    model = replicas.build_model()
    x, y, batch_size = replicas.local_share(x, y, 128)  # 128: the global batch
    with replicas.scope():
        model.fit(x, y, batch_size=batch_size, callbacks=replicas.callbacks)
    replicas.single_device_copy(model).save("model.keras")
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np

from .errors import InputError, first_line, require_at_least
from .model import LEARNING_RATE, build_model, compile_model, plain_copy
from .runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Replicas:
    """How one training run is spread: ``count`` model replicas in sync, over ``processes`` processes.

    ``Replicas()`` is plain single-device training. ``engine`` is the backend's
    own: a ``keras.distribution.DataParallel`` (JAX) or a ``tf.distribute`` strategy.
    """

    count: int = 1
    processes: int = 1
    process_index: int = 0
    engine: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_chief(self) -> bool:
        """Process 0 writes the run folder; the other processes only train."""
        return self.process_index == 0

    @property
    def data_shards(self) -> int:
        """Into how many shares the training arrays are cut, one per process fed.

        JAX assembles each global batch from every process's local batch, so
        each process is given its own share; TensorFlow's multi-worker
        strategy shards the full arrays across workers itself.
        """
        return self.processes if isinstance(self.engine, keras.distribution.DataParallel) else 1

    def scope(self):
        """The context in which to build the model and, on JAX, to train it."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()

    @property
    def callbacks(self) -> list:
        """Callbacks that ``fit`` needs on this engine, besides the caller's own."""
        if isinstance(self.engine, keras.distribution.DataParallel) and \
                self.engine.device_mesh.devices.flat[0].platform == "cpu":  # jax.Device objects
            return [_InOrderLogs()]
        return []

    def build_model(self, learning_rate=LEARNING_RATE) -> keras.Model:
        """The compiled original model, its variables mirrored on every replica."""
        sync = self.engine is not None and keras.backend.backend() == "tensorflow"
        with self.scope():
            return compile_model(build_model(synchronized_batch_norm=sync), learning_rate)

    def local_share(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, int]:
        """This process's examples of ``x, y`` and its batch size, for a global batch of ``batch_size``.

        Every batch, the last one too, must split evenly across the replicas
        (JAX shards it as one array), so up to (replicas per process - 1)
        trailing examples are left out. On JAX each process takes every
        ``processes``-th example and ``batch_size / processes`` of them a step.
        """
        if self.engine is None:
            return x, y, batch_size
        shards, index = self.data_shards, self.process_index if self.data_shards > 1 else 0
        share = even_share(len(x), batch_size, self.count, shards)
        return x[index::shards][:share], y[index::shards][:share], batch_size // shards

    def single_device_copy(self, model: keras.Model, learning_rate=LEARNING_RATE) -> keras.Model:
        """``model`` rebuilt outside any distribution, with its weights and optimizer state.

        The copy is an ordinary model, exactly as single-device training makes
        it (batch normalisation not synchronised), so it saves, loads and
        evaluates anywhere, on any backend and any number of devices.
        """
        if self.engine is None:
            return model
        return plain_copy(model, learning_rate)


class _InOrderLogs(keras.callbacks.Callback):
    """Makes Keras fetch each batch's logs on the main thread, in step order.

    On JAX, Keras fetches them from a thread pool unless a callback has batch
    hooks of its own. With several XLA:CPU devices those concurrent fetches
    stall the devices' all-reduce (JAX 0.10.2 aborts after 40 s: "Termination
    timeout for all reduce ... cross_module"), seen here on the 157 validation
    steps of the MNIST test set. These empty hooks switch that off.
    """

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_test_batch_end(self, batch, logs=None):
        pass


def even_share(examples: int, batch_size: int, replicas: int, processes: int = 1) -> int:
    """How many of ``examples`` each process trains on so that every global batch splits evenly.

    Each process's batches hold ``batch_size / processes`` examples; its last,
    partial batch keeps a multiple of its ``replicas / processes`` devices.
    """
    if batch_size % replicas:
        raise InputError("--batch-size", f"{batch_size} does not split evenly across {replicas} replicas; "
                                         f"use a multiple of {replicas}")
    local_batch, local_replicas = batch_size // processes, replicas // processes
    share = examples // processes
    return share - share % local_batch % local_replicas


def data_parallel(runtime: Runtime, count: int | None = None) -> Replicas:
    """Replicas on every visible device of the run's kind (or the first ``count``), on the backend's engine.

    On TensorFlow, call it before anything else runs TensorFlow ops: a
    ``TF_CONFIG`` naming several workers selects the multi-worker strategy,
    which TensorFlow can set up only at program start.
    """
    if count is not None:
        require_at_least("replicas", count)
    make = _jax_data_parallel if runtime.backend == "jax" else _tensorflow_data_parallel
    return make(runtime.device, count)


def _first(devices: list, count: int | None, kind: str) -> list:
    if count is not None and count > len(devices):
        raise InputError("replicas", f"{count} requested but only {len(devices)} {kind} device(s) are visible")
    return devices[:count]


def _jax_data_parallel(kind: str, count: int | None) -> Replicas:
    import jax

    devices = jax.devices(kind)  # every process's devices of this kind
    if jax.process_count() > 1 and count not in (None, len(devices)):
        raise InputError("replicas", f"a multi-process run uses all {len(devices)} devices; received {count}")
    # fit() is given each process's own share of the arrays (Replicas.local_share),
    # so Keras must not try to shard them across processes again.
    engine = keras.distribution.DataParallel(devices=_first(devices, count, kind), auto_shard_dataset=False)
    return Replicas(engine.num_model_replicas, jax.process_count(), jax.process_index(), engine)


def _tensorflow_data_parallel(kind: str, count: int | None) -> Replicas:
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        jobs = resolver.cluster_spec().as_dict()
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # its JSON, and the shapes of its parts
        raise InputError("TF_CONFIG", f"not a TensorFlow cluster description: {first_line(err, limit=200)} "
                                      "(see docs/gpu-and-distributed.md)") from None
    tasks = [(job, i) for job in ("chief", "worker") for i in range(len(jobs.get(job, [])))]
    if len(tasks) > 1 and (resolver.task_type, resolver.task_id) not in tasks:
        raise InputError("TF_CONFIG", f"its task ({resolver.task_type} {resolver.task_id}) is not one of its "
                                      f"cluster's: {', '.join(f'{job} {i}' for job, i in tasks)}")
    if len(tasks) > 1:
        if count is not None:
            raise InputError("replicas", "a multi-worker run uses every worker's devices; leave the count unset")
        strategy = _multi_worker_strategy(resolver)
        return Replicas(strategy.num_replicas_in_sync, len(tasks),
                        tasks.index((resolver.task_type, resolver.task_id)), strategy)
    devices = [d.name for d in tf.config.list_logical_devices(kind.upper())]
    strategy = tf.distribute.MirroredStrategy(_first(devices, count, kind))
    return Replicas(strategy.num_replicas_in_sync, 1, 0, strategy)


def _multi_worker_strategy(resolver):
    import tensorflow as tf

    class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """TensorFlow's multi-worker strategy, its ``reduce`` accepting what Keras 3.15's ``fit`` passes.

        Keras reduces a nest of tensors (the first batch, to build the model)
        and scalar logs with ``axis=0``. ``MirroredStrategy`` accepts both; the
        multi-worker strategy accepts neither (keras-team/keras#20585), so this
        reduces each tensor on its own, and a scalar across replicas only, as
        ``MirroredStrategy`` does. The communication is TensorFlow's own.
        """

        def reduce(self, reduce_op, value, axis):
            def each(tensor):
                scalar = self.experimental_local_results(tensor)[0].shape.rank == 0
                return super(MultiWorkerMirroredStrategy, self).reduce(reduce_op, tensor, None if scalar else axis)

            return tf.nest.map_structure(each, value)

    try:
        return MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except RuntimeError as err:  # "Collective ops must be configured at program startup"
        raise InputError("TF_CONFIG", f"the multi-worker strategy must be created before TensorFlow runs "
                                      f"anything in this process ({err})") from None
