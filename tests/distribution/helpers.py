"""Running distribution checks in subprocesses with virtual CPU devices.

`keras.distribution` needs several devices; XLA gives the CPU that many with
`--xla_force_host_platform_device_count`, but only before JAX starts, so
these checks run in fresh processes and the rest of the suite keeps one
device. Each subprocess has a timeout.
"""

import os
import socket
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 900  # seconds; the machine running CI may be slow and shared

jax_only = pytest.mark.skipif(
    keras.config.backend() != "jax",
    reason="keras.distribution places variables on the JAX backend only "
    "(other backends: see test_backends.py)",
)


def xla_flags(devices):
    """`XLA_FLAGS` of this process plus `devices` virtual CPU devices.

    XLA aborts a process when a collective's participants have not all
    arrived within 40 s; on a 2-core CI machine running two test workers,
    8 virtual devices once missed it (one device thread starved, exit -6).
    The limit is raised to 10 minutes: a real deadlock still ends the test.
    """
    return (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
        " --xla_cpu_collective_call_terminate_timeout_seconds=600"
    )


def worker_env(devices):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        XLA_FLAGS=xla_flags(devices),
        PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        TF_CPP_MIN_LOG_LEVEL="3",
        JAX_PLATFORMS="cpu",
    )
    return env


def _report(result):
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-8000:]}"


def run_worker(module, *args, devices=8, timeout=TIMEOUT):
    """Run `python -m MODULE ARGS` on `devices` CPU devices; its stdout, or a failure."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", module, *map(str, args)],
            env=worker_env(devices), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{module} {args} did not finish in {timeout} s:\n{e.stderr}")
    assert result.returncode == 0, _report(result)
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(module, count, args, devices, timeout=TIMEOUT):
    """Start `count` processes of `module` (process id, port, ARGS); wait for all."""
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", module, str(i), str(count), str(port), *map(str, args)],
            env=worker_env(devices), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(count)
    ]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=timeout)
            outputs.append((process.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"{module}: {count} processes did not finish in {timeout} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for i, (code, stdout, stderr) in enumerate(outputs):
        assert code == 0, f"process {i} exit {code}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-8000:]}"
    return [stdout for _, stdout, _ in outputs]
