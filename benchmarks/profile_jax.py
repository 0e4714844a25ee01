"""Where one JAX/CPU training step of the model spends its time, per XLA operation and per layer.

Run::

    python -m benchmarks.profile_jax [--batch-size 128] [--steps 5] [--out DIR] [--data DIR] [--plain]

It builds the model as ``training.train`` does (with ``jax_cpu.speed_up``'s
faster forms; ``--plain``: with Keras's own computations, as before them),
compiles Keras's own training step (``model.train_step`` under ``jax.jit``
with the state donated, as ``make_train_function`` does), runs ``--steps``
steps inside ``jax.profiler.trace`` and reads the Perfetto trace it writes. On
CPU, XLA's thunk executor records one event per executed operation (a fusion,
a convolution, a copy), named as in the compiled HLO and tagged with the
execution's ``run_id``. Each operation is mapped back to the layer and the
pass it came from through the ``op_name`` metadata that JAX writes into the HLO
(``jvp(conv1)`` is the forward pass, ``transpose(jvp(conv1))`` the backward one;
a convolution's backward op whose result has the kernel's size is its weight
gradient). Operations that XLA adds while compiling carry no metadata; they take
the label of the operation that consumes their result, else of their input.

It prints two tables, per layer and pass and per HLO operation, in ms per step
(the median over the profiled steps) and % of the step (the span of the step's
operations), and writes both to ``DIR/profile.json`` beside the trace. Timings
are exclusive: an operation's nested operations (a loop's body) count on their own.
The row "(between operations)" is the part of the step's span in which no
operation ran (the operations it came before are listed): dispatch, set-up
that a kernel does before its event begins, and waits for a thread when other programs load the
cores. When operations overlap (XLA may run independent ones on both threads,
and some kernels finish their work after their event ends), the rows need not
add up to the step.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mnist_multibackend.atomic import write_text
from mnist_multibackend.runtime import machine, start

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+?)(?:\{[^}]*\})? ([\w\-]+)\(")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)=\{?([^}=]*?)\}?(?:, [a-z_]+=|$)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SCOPE = re.compile(r"(transpose\()?jvp\(([^)]+)\)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_jax", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps; the median per operation counts")
    parser.add_argument("--out", help="folder for the trace and profile.json (default: a new temporary folder)")
    parser.add_argument("--data", help="MNIST location, as for mnist-mb train")
    parser.add_argument("--top", type=int, default=25, help="HLO operations listed (all go to the JSON)")
    parser.add_argument("--plain", action="store_true", help="Keras's own computations, without jax_cpu.speed_up")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="profile_jax_"))
    out.mkdir(parents=True, exist_ok=True)
    profile = run(args, out)
    write_text(out / "profile.json", json.dumps(profile, indent=1))
    print(format_tables(profile, args.top))
    print(f"\ntrace and profile.json in {out}")
    return 0


def run(args, out: Path) -> dict:
    runtime = start("jax", "cpu")
    import jax

    from mnist_multibackend import data
    from mnist_multibackend.jax_cpu import speed_up
    from mnist_multibackend.keras_private import jax_train_state
    from mnist_multibackend.model import build_model, compile_model

    load = os.getloadavg()[0]
    dataset = data.load_dataset(args.data)
    x = data.as_model_input(dataset.x_train[:args.batch_size])
    y = data.one_hot(dataset.y_train[:args.batch_size])
    model = build_model()  # Keras's own computations
    if not args.plain:
        speed_up(model)
    model = compile_model(model)
    model.train_on_batch(x, y)  # builds the optimizer and metric variables that the step's state holds
    state = jax_train_state(model)
    batch = (jax.device_put(x), jax.device_put(y), None)
    # The executable that runs is the one whose HLO is read: the trace names its operations.
    compiled = jax.jit(model.train_step, donate_argnums=0).lower(state, batch).compile()
    labels = label_operations(compiled.as_text(), kernel_sizes(model))

    def step(state):
        logs, state = compiled(state, batch)
        return jax.block_until_ready(state)

    for _ in range(3):  # warm-up: first-run allocations and thread-pool start
        state = step(state)
    wall = []
    for _ in range(args.steps):
        start_time = time.perf_counter()
        state = step(state)
        wall.append(time.perf_counter() - start_time)
    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        for _ in range(args.steps):
            state = step(state)
    trace = max(out.glob("plugins/profile/*/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    steps = operation_times(trace)
    if not steps:
        raise SystemExit(f"profile_jax: the trace {trace} has no per-operation events; "
                         "this jaxlib's CPU runtime does not record them")
    return summarize(steps, labels, {
        "batch_size": args.batch_size, "steps": len(steps), "runtime": runtime.as_dict(), "machine": machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()], "load_average_1min_at_start": round(load, 2),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "trace": str(trace), "plain": args.plain,
        "step_ms_unprofiled": 1e3 * statistics.median(wall),
    })


def kernel_sizes(model) -> dict[str, int]:
    """Elements of each convolution's and dense layer's kernel, by layer name."""
    return {layer.name: _product(layer.kernel.shape) for layer in model.layers if hasattr(layer, "kernel")}


def _product(shape) -> int:
    result = 1
    for dim in shape:
        result *= int(dim)
    return result


def label_operations(hlo_text: str, kernels: dict[str, int]) -> dict[str, tuple[str, str]]:
    """``{HLO instruction name: ("conv1 weight gradient", "f32[32,3,3,32]"), ...}``: label and result shape."""
    computations: dict[str, list[str]] = {}
    instructions = {}  # name -> (shape, opcode, operands, called computations, op names)
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        match = _INSTRUCTION.match(line)
        if match is None or current is None:
            continue
        name, shape, opcode = match.groups()
        body = line.split(" = ", 1)[1]
        called = [c.strip().lstrip("%") for group in _CALLED.findall(body) for c in group.split(",") if c.strip()]
        operands = _OPERAND.findall(line[match.end():].split("), ", 1)[0])
        instructions[name] = (shape, opcode, operands, called, _OP_NAME.findall(line))
        current.append(name)

    def inside(name, seen=frozenset()):
        """The instruction and every instruction of the computations it calls."""
        found = [name]
        for computation in instructions[name][3]:
            for inner in computations.get(computation, ()):
                if inner not in seen:
                    found += inside(inner, seen | {name})
        return found

    sizes = {size: layer for layer, size in kernels.items()}
    labels = {}
    for name, (shape, opcode, operands, _, _) in instructions.items():
        body = inside(name)
        label = _label([n for inner in body for n in instructions[inner][4]], shape, kernels)
        if not label and _elements(shape) in sizes and any(instructions[i][1] in ("convolution", "dot") for i in body):
            label = f"{sizes[_elements(shape)]} weight gradient"  # XLA dropped the metadata of this fusion
        if all(instructions[o][1] == "constant" for o in operands if o in instructions) and opcode != "parameter":
            label = ""  # a constant materialised (zeros, an iota): it belongs to the operation that uses it
        labels[name] = label
    users = collections.defaultdict(list)
    for name, (_, _, operands, _, _) in instructions.items():
        for operand in operands:
            users[operand].append(name)
    # Compiler-made operations (a max pool gradient's expansion, layout copies) inherit a label,
    # from the operation that consumes their result, else from their input.
    for _ in range(20):
        changed = False
        for name, label in labels.items():
            if label:
                continue
            near = [labels.get(u) for u in users[name]] + [labels.get(o) for o in instructions[name][2]]
            near = [n for n in near if n]
            if near:
                labels[name] = near[0]
                changed = True
        if not changed:
            break
    return {name: (label or "other", instructions[name][0]) for name, label in labels.items()}


def _label(op_names: list[str], shape: str, kernels: dict[str, int]) -> str:
    """The layer and pass named by an instruction's metadata (the most frequent), or ''."""
    votes = collections.Counter()
    for op_name in op_names:
        scopes = _SCOPE.findall(op_name)
        if scopes:
            backward, layer = scopes[-1]
            role = "backward" if backward else "forward"
            if backward and layer in kernels and op_name.endswith("conv_general_dilated"):
                role = "weight gradient" if _elements(shape) == kernels[layer] else "input gradient"
            elif backward and layer in kernels and op_name.endswith("dot_general"):
                role = "weight gradient" if _elements(shape) == kernels[layer] else "input gradient"
            votes[f"{layer} {role}"] += 1
        elif "/adam/" in op_name or op_name.endswith("/adam"):
            votes["optimizer update (Adam)"] += 1
        elif op_name.startswith("jit("):
            votes["step bookkeeping (metrics, counters)"] += 1
    return votes.most_common(1)[0][0] if votes else ""


def _elements(shape: str) -> int:
    dims = re.match(r"^\w+\[([\d,]*)\]", shape)
    if dims is None:
        return -1
    return _product(int(d) for d in dims.group(1).split(",") if d)


def operation_times(trace_path: Path) -> list[dict[str, float]]:
    """Per profiled step (one XLA execution): ``{HLO op: exclusive ms}``, plus ``"__span__"``, the step's ms,
    and ``"__idle__ OP"``, the ms in which no operation ran just before ``OP`` began."""
    with gzip.open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_op")]
    by_thread = collections.defaultdict(list)
    for e in ops:
        by_thread[e["tid"]].append(e)
    exclusive = {}
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []
        for e in thread_events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"]:
                stack.pop()
            exclusive[id(e)] = e["dur"]
            if stack:
                exclusive[id(stack[-1])] -= e["dur"]
            stack.append(e)
    runs = collections.defaultdict(list)
    for e in ops:
        runs[e["args"].get("run_id")].append(e)
    steps = []
    for run_events in sorted(runs.values(), key=lambda es: min(e["ts"] for e in es)):
        times = collections.defaultdict(float)
        for e in run_events:
            times[e["args"]["hlo_op"]] += exclusive[id(e)] / 1e3
        times["__span__"] = (max(e["ts"] + e["dur"] for e in run_events) - min(e["ts"] for e in run_events)) / 1e3
        busy_until = min(e["ts"] for e in run_events)
        for e in sorted(run_events, key=lambda e: e["ts"]):
            if e["ts"] > busy_until:
                times[f"__idle__ {e['args']['hlo_op']}"] += (e["ts"] - busy_until) / 1e3
            busy_until = max(busy_until, e["ts"] + e["dur"])
        steps.append(dict(times))
    return steps


def summarize(steps: list[dict[str, float]], labels: dict[str, str], context: dict) -> dict:
    """Medians over the steps, per HLO operation and per layer and pass."""
    step_ms = statistics.median(s["__span__"] for s in steps)
    names = {name for s in steps for name in s if not name.startswith("__")}
    per_op = {name: statistics.median(s.get(name, 0.0) for s in steps) for name in names}
    idle_names = {name for s in steps for name in s if name.startswith("__idle__ ")}
    idle = {name.split(" ", 1)[1]: statistics.median(s.get(name, 0.0) for s in steps) for name in idle_names}
    idle_before = [{"hlo_op": name, "layer": labels.get(name, ("other", ""))[0], "ms": ms}
                   for name, ms in sorted(idle.items(), key=lambda kv: -kv[1]) if ms >= 0.5]
    operations = [{"hlo_op": name, "layer": labels.get(name, ("other", ""))[0], "shape": labels.get(name, ("", "?"))[1],
                   "ms": ms, "pct": 100 * ms / step_ms}
                  for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]
    per_layer = collections.defaultdict(lambda: [0.0, 0])
    for op in operations:
        per_layer[op["layer"]][0] += op["ms"]
        per_layer[op["layer"]][1] += 1
    between = step_ms - sum(per_op.values())
    if between > 0:
        per_layer["(between operations)"] = [between, 0]
    layers = [{"layer": layer, "ms": ms, "pct": 100 * ms / step_ms, "hlo_ops": count}
              for layer, (ms, count) in sorted(per_layer.items(), key=lambda kv: -kv[1][0])]
    return {**context, "step_ms_profiled": step_ms, "ops_sum_ms": sum(per_op.values()),
            "by_layer": layers, "by_hlo_op": operations, "idle_before": idle_before}


def format_tables(profile: dict, top: int) -> str:
    form = "Keras's own computations (--plain)" if profile["plain"] else "as train() runs it (jax_cpu.speed_up)"
    lines = [f"JAX/CPU training step, {form}, batch {profile['batch_size']}, "
             f"XLA_FLAGS={profile['xla_flags']!r}: {profile['step_ms_profiled']:.1f} ms profiled "
             f"(median of {profile['steps']} steps; {profile['step_ms_unprofiled']:.1f} ms unprofiled), "
             f"operations sum to {profile['ops_sum_ms']:.1f} ms; load average {profile['load_average']}",
             "", f"{'layer and pass':40} {'ms/step':>8} {'% step':>7} {'ops':>4}"]
    lines += [f"{r['layer']:40} {r['ms']:8.2f} {r['pct']:6.1f}% {r['hlo_ops']:4}" for r in profile["by_layer"]]
    if profile["idle_before"]:
        lines.append("no operation running, just before: " + ", ".join(
            f"{r['hlo_op']} ({r['layer']}) {r['ms']:.1f} ms" for r in profile["idle_before"][:5]))
    lines += ["", f"{'HLO operation':28} {'layer and pass':32} {'result':26} {'ms/step':>8} {'% step':>7}"]
    lines += [f"{r['hlo_op']:28} {r['layer']:32} {r['shape'][:26]:26} {r['ms']:8.2f} {r['pct']:6.1f}%"
              for r in profile["by_hlo_op"][:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
