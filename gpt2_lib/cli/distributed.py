"""`finetune`'s distributed training: the mesh, the processes, who writes.

`--data-parallel N --model-parallel M` trains on an `(N, M)` mesh of all the
devices JAX sees (`gpt2_lib.models.distribution.make_distribution`):
`DataParallel` when M is 1, else `ModelParallel` with the backbone's layout
map. The distribution is set before the preset is loaded, so `from_preset`
loads each weight straight into its shards.

`--coordinator HOST:PORT --num-processes P --process-id I` (or Keras'
`KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES`,
`KERAS_DISTRIBUTION_PROCESS_ID`) run the same command as one of P processes:
`keras.distribution.initialize()` is called before anything touches a JAX
device. Every process reads the same data and computes the same global
batches (each feeds its own devices' rows); process 0 writes the files and
prints the progress (`writer_output`), the others print nothing but errors.

`keras.distribution` places variables on the JAX backend only: any of these
options on another backend is an error before anything is loaded.
"""

import contextlib
import os
import sys

import keras

from gpt2_lib.cli.errors import CLIError
from gpt2_lib.models.distribution import make_distribution
from gpt2_lib.utils import distribution as dist

# Option -> Keras' environment variable for the same value.
PROCESS_ENV = {
    "coordinator": "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "num_processes": "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "process_id": "KERAS_DISTRIBUTION_PROCESS_ID",
}
_OPTION = {"coordinator": "--coordinator", "num_processes": "--num-processes",
           "process_id": "--process-id", "data_parallel": "--data-parallel",
           "model_parallel": "--model-parallel"}
VIRTUAL_DEVICES_HINT = (
    "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=K (set before the command "
    "starts) gives K virtual devices"
)


def _env_int(name, option):
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise CLIError(f"${name} (for {option}) must be an integer, got {text!r}.") from None


def process_options(args):
    """`(coordinator, num_processes, process_id)` from the options or Keras' variables.

    None when no multi-process option or variable is given; a CLIError when
    only some of the three are.
    """
    values, sources = {}, {}
    for key, env in PROCESS_ENV.items():
        value = getattr(args, key, None)
        source = _OPTION[key]
        if value is None and os.environ.get(env):
            value = os.environ[env] if key == "coordinator" else _env_int(env, _OPTION[key])
            source = f"${env}"
        if value is not None:
            values[key], sources[key] = value, source
    if not values:
        return None
    missing = [f"{_OPTION[k]} (or ${PROCESS_ENV[k]})" for k in PROCESS_ENV if k not in values]
    if missing:
        given = ", ".join(sources[k] for k in PROCESS_ENV if k in values)
        raise CLIError(
            f"several processes need --coordinator, --num-processes and --process-id together; "
            f"{given} given, missing {' and '.join(missing)}."
        )
    coordinator, count, index = values["coordinator"], values["num_processes"], values["process_id"]
    for address in coordinator.split(","):
        host, _, port = address.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CLIError(
                f"{sources['coordinator']}: {coordinator!r} is not HOST:PORT (the address of "
                "process 0, e.g. 10.0.0.1:1234)."
            )
    if count < 1:
        raise CLIError(f"{sources['num_processes']}: must be a positive integer, got {count}.")
    if not 0 <= index < count:
        raise CLIError(
            f"{sources['process_id']}: {index} is not a process of {count} (0 to {count - 1})."
        )
    return coordinator, count, index


def requested(args):
    """Whether the run is distributed (a mesh option, or several processes)."""
    return (
        args.data_parallel is not None
        or args.model_parallel is not None
        or process_options(args) is not None
    )


def check_backend(args):
    """A CLIError when a distribution is asked for off the JAX backend."""
    if requested(args) and keras.config.backend() != "jax":
        given = [option for key, option in _OPTION.items() if getattr(args, key, None) is not None]
        given += [f"${env}" for env in PROCESS_ENV.values() if os.environ.get(env)]
        raise CLIError(
            f"distributed fine-tuning ({', '.join(given)}) needs the JAX backend: --backend jax "
            f"(keras.distribution places variables on JAX only; this is the "
            f"{keras.config.backend()} backend)."
        )


def _mesh_shape(args, devices):
    """`(N, M)`: the options, the missing one inferred from the device count."""
    n, m = args.data_parallel, args.model_parallel
    processes = dist.process_count()
    where = f"{devices} device{'s' if devices != 1 else ''}" + (
        f" in {processes} processes" if processes > 1 else ""
    )
    if n is None and m is None:
        n, m = devices, 1  # several processes and no mesh: data parallel over all
    elif n is None or m is None:
        given, value = ("--model-parallel", m) if n is None else ("--data-parallel", n)
        if devices % value:
            raise CLIError(
                f"{given} {value} does not divide the {where} JAX sees; use a divisor of "
                f"{devices} ({VIRTUAL_DEVICES_HINT})."
            )
        n, m = (devices // m, m) if n is None else (n, devices // n)
    if n * m != devices:
        raise CLIError(
            f"--data-parallel {n} x --model-parallel {m} = {n * m} devices, but JAX sees "
            f"{where}; choose N x M = {devices} ({VIRTUAL_DEVICES_HINT})."
        )
    return n, m


def setup(args):
    """Start the processes and make the distribution; None when not distributed.

    Called before anything touches a JAX device; the caller sets the result
    with `keras.distribution.set_distribution` before loading the preset.
    """
    check_backend(args)
    if not requested(args):
        return None
    processes = process_options(args)
    if processes is not None:
        coordinator, count, index = processes
        if count > 1 and (args.validation_data or args.validation_split):
            # Scoring held-out windows inside fit() runs eager ops on
            # weights spanning processes; their collectives can interleave
            # differently per process (seen: a hang at the last step).
            raise CLIError(
                "--validation-data/--validation-split are not supported with several "
                "processes yet; validate the saved preset with `gpt2-lib perplexity`, or "
                "train on one host."
            )
        keras.distribution.initialize(
            job_addresses=coordinator, num_processes=count, process_id=index
        )
        if dist.process_count() != count:
            raise CLIError(
                f"--num-processes {count}, but the JAX distributed runtime has "
                f"{dist.process_count()} processes."
            )
    import jax

    devices = jax.device_count()
    n, m = _mesh_shape(args, devices)
    if args.batch_size % n:
        raise CLIError(
            f"argument --batch-size: {args.batch_size} windows do not split over "
            f"--data-parallel {n} replicas; use a multiple of {n}."
        )
    args.data_parallel, args.model_parallel = n, m
    return make_distribution(model_parallel=m, data_parallel=n)


def describe(args, distribution):
    """One phrase for the start line: the mesh and the processes."""
    if distribution is None:
        return ""
    kind = type(distribution).__name__
    processes = dist.process_count()
    return (
        f", {kind} on a ({args.data_parallel} data x {args.model_parallel} model) mesh of "
        f"{args.data_parallel * args.model_parallel} devices"
        + (f" in {processes} processes" if processes > 1 else "")
    )


@contextlib.contextmanager
def writer_output():
    """Within: stdout goes nowhere on processes other than process 0 (errors still show)."""
    if dist.is_writer():
        yield
        return
    sys.stdout.flush()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def run_on_writer(action, what):
    """Run `action()` on process 0 only; every process learns whether it worked.

    With several processes this is a collective (every process calls it at
    the same point). Raises on every process when process 0 failed.
    """
    error = None
    if dist.is_writer():
        try:
            action()
        except BaseException as e:  # the other processes must learn of it
            error = e
    if not dist.all_agree(error is None):
        if error is not None:
            raise error
        raise RuntimeError(f"process 0 could not write {what} (see its error).")
