r"""Selective scan (Mamba's S6 recurrence) with interchangeable backends.

    selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto") -> y

Shapes, with G groups and channel c using group c // (channels // G):

    u, delta:   (batch, channels, length)
    A:          (channels, d_state)                 negative real decay rates (A = -exp(A_log))
    B, C:       (batch, G, d_state, length)
    D:          (channels,) or None                 skip connection
    delta_bias: (channels,) or None                 added to delta before the softplus
    y:          (batch, channels, length), dtype of u

Math, per batch, channel and time step t (h_{-1} = 0):

    dt_t = softplus(delta_t + delta_bias)           (delta_t + delta_bias if not delta_softplus)
    h_t  = exp(dt_t A) * h_{t-1} + dt_t B_t u_t     h: (d_state,)
    y_t  = <C_t, h_t> + D u_t

Backends
--------
``"reference"``
    A sequential loop over time steps. Obviously correct, differentiable, slow: for tests only.
``"torch"``
    The chunked scan below, in plain PyTorch: differentiable, runs on any device, traces and exports to
    ONNX (``torch.onnx.export`` with ``dynamo=False`` or ``dynamo=True``).
``"cpu_fused"``
    A fused C++ kernel (``csrc/selective_scan_cpu.cpp``, forward and backward) that keeps the state in
    registers while streaming the inputs, parallel over (batch, channel) with ``at::parallel_for`` (so it
    follows ``torch.set_num_threads``). It is built with ``torch.utils.cpp_extension`` on first use and cached
    in torch's extensions directory (``$TORCH_EXTENSIONS_DIR/evonets_selective_scan_cpu``, by default under
    ``~/.cache/torch_extensions``): a first use takes 10-25 s longer on 2 cores (19-23 s measured on 2 busy
    cores); a cached kernel loads in under 0.1 s. When the source is missing (e.g. this file was copied into a
    Hugging Face remote-code folder), the build fails or it does not finish in time, it warns once and falls
    back to ``"torch"``. Its ops have Meta kernels, so ``torch.compile(fullgraph=True)`` traces through it, forward
    and backward; call ``available_backends()`` first so the build itself happens outside compilation.

    The build never hangs a process. It runs in a child process (its own process group, which dies with the
    process that started it, compilers included) under an ``fcntl`` lock on ``evonets_build.lock`` in the
    build folder. The kernel frees that lock when its holders die, even by ``kill -9``, so torch's own ``lock``
    file found while holding it was left by a killed build and is removed. Another process's build is waited
    for. ``EVONETS_KERNEL_BUILD_TIMEOUT`` (seconds, default 300) bounds the wait and the build together; past
    it the build is stopped and ``"torch"`` used. ``0`` never builds (a kernel built before still loads).
``"cuda"``
    mamba-ssm's ``selective_scan_fn``, if it imports (it needs its CUDA extension) and tensors are on CUDA.
``"auto"``
    ``"cuda"`` on CUDA tensors when mamba-ssm imports; ``"cpu_fused"`` on CPU tensors when it builds;
    ``"torch"`` otherwise, and always while exporting to ONNX or tracing with ``torch.jit``. The environment
    variable ``EVONETS_SCAN_BACKEND`` (one of the backend names) overrides what ``"auto"`` picks outside
    export/tracing; an explicit ``backend=`` argument always wins.

All backends compute in float32: bf16/fp16 inputs are upcast and the result is cast back to u's dtype.

Chunked formulation (``"torch"``)
---------------------------------
The sequential loop launches a handful of tiny ops per time step; materialising the (batch, channels,
length, d_state) state tensor at once (308 MB at VMamba's stage-1 size) makes every elementwise pass
memory-bound. The chunked scan sits in between. Split time into K chunks of T steps and run all chunks at
once, one in-chunk step at a time, so each op touches one (batch, channels, K, d_state) slice that stays
in cache:

1. End state of every chunk started from zero, by T steps of ``s = exp(dt_t A) s + dt_t B_t u_t``.
2. The true state entering chunk k, sequentially over chunks:
   ``H_{k+1} = exp(A sum_{t in k} dt_t) H_k + s_k``.
3. The same T steps again from ``H_k``, reading out ``y_t = <C_t, h_t>``.

Every exponent is ``dt A <= 0``, a decay, so nothing overflows however negative A or large dt get (unlike
the ``exp(+cumsum)`` factorisation, which overflows once ``|A| sum dt`` exceeds ~88 inside a chunk). T is
at most ``TORCH_CHUNK_SIZE`` and chosen so that K chunks cover the length with less than K steps to spare;
those are padded with dt = 0 (decay 1, no input) and cut off.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import torch
import torch.nn.functional as F

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "cpu_fused", "cuda", "reference")
BACKEND_ENV_VAR = "EVONETS_SCAN_BACKEND"
BUILD_TIMEOUT_ENV_VAR = "EVONETS_KERNEL_BUILD_TIMEOUT"
DEFAULT_BUILD_TIMEOUT = 300.0  # seconds; a first build takes 10-25 s on 2 cores

# Time steps per chunk of the "torch" backend. 64-128 measured fastest at VMamba's stage-1 size on CPU (a
# step's slice then fits in cache); the traced ONNX graph grows linearly with it.
TORCH_CHUNK_SIZE = 64

_CPU_KERNEL_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
_CPU_KERNEL_NAME = "evonets_selective_scan_cpu"
# -fno-trapping-math lets the compiler turn the kernel's float min/max into vector instructions; it does not
# change results. No -march=native: the kernel carries its own runtime-dispatched AVX2/AVX-512 clones.
_CPU_KERNEL_CFLAGS = ["-O3", "-fno-trapping-math"]

# Beside torch's own `lock` in the build folder: held (fcntl.flock) by the process that builds and by its build child,
# so the kernel frees it when they die, however they die. Never deleted (deleting a lock file races).
_BUILD_LOCK_NAME = "evonets_build.lock"
# What the library in the build folder was built from (see _build_key); written after a build succeeded.
_BUILD_KEY_NAME = "evonets_build.key"
# The build child: torch's JIT build, in a new session (see _build_in_subprocess). Its stdin is a pipe from the
# parent, which never writes to it: end of file means the parent is gone, and the child then stops its process group
# rather than build on as an orphan. SIGTERM, not SIGKILL: ninja puts every compiler in a process group of its own,
# and on SIGTERM it passes the signal on to them and waits for them.
_BUILD_SCRIPT = """
import json, os, signal, sys, threading

def die_with_parent():
    while os.read(0, 1):  # unbuffered: no lock for the interpreter's shutdown to trip over
        pass
    os.killpg(0, signal.SIGTERM)

threading.Thread(target=die_with_parent, daemon=True).start()
from torch.utils import cpp_extension

cpp_extension.load(**json.loads(sys.argv[1]), is_python_module=False)
sys.stdout.flush()
os._exit(0)  # without waiting for the watcher thread
"""

# None: not tried yet; afterwards whether the kernel is loaded. Tried at most once per process.
_cpu_kernel_loaded: bool | None = None
_cuda_scan_fn: Callable[..., torch.Tensor] | None = None
_cuda_import_tried = False


def _build_timeout() -> float:
    """Seconds from `EVONETS_KERNEL_BUILD_TIMEOUT` (default `DEFAULT_BUILD_TIMEOUT`); 0 means never build."""
    value = os.environ.get(BUILD_TIMEOUT_ENV_VAR, "").strip()
    if not value:
        return DEFAULT_BUILD_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0:  # also rejects nan
        raise ValueError(
            f"Environment variable {BUILD_TIMEOUT_ENV_VAR}={value!r}: expected seconds >= 0 (0: never build the "
            "fused CPU kernel, only load one built before)."
        )
    return seconds


def _build_key() -> str:
    """Hash of everything the built library depends on here: source, flags, torch and Python."""
    digest = hashlib.sha256(_CPU_KERNEL_SOURCE.read_bytes())
    digest.update(json.dumps([_CPU_KERNEL_CFLAGS, torch.__version__, sys.version]).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(build_dir: Path, deadline: float) -> Iterator[IO[str] | None]:
    """Hold our lock on `build_dir`, waiting for another holder until `deadline` (time.monotonic()); yields the
    open lock file, or None when another process still held it at the deadline."""
    with open(build_dir / _BUILD_LOCK_NAME, "a+") as lock_file:
        waiting = False
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield None
                    return
                if not waiting:
                    lock_file.seek(0)
                    owner = lock_file.read().strip() or "?"
                    logger.info(
                        "Waiting for process %s, which is building the fused CPU kernel in %s.", owner, build_dir
                    )
                    waiting = True
                time.sleep(0.2)
        try:
            lock_file.truncate(0)  # the owner's pid, for the message above
            lock_file.write(f"{os.getpid()}\n")
            lock_file.flush()
            yield lock_file
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _remove_stale_torch_lock(build_dir: Path) -> None:
    """Remove torch's build lock; call only while holding our lock, when no build of ours can be running."""
    torch_lock = build_dir / "lock"
    if torch_lock.exists():
        logger.info("Removing %s, a stale lock left by a build that was killed.", torch_lock)
        torch_lock.unlink(missing_ok=True)


def _stop_process_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop the process group that `process` leads: SIGTERM (ninja passes it on to the compilers, each in a group of
    its own, and waits for them), then SIGKILL whatever is left after `grace` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)  # raises once no process of the group is left
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _build_in_subprocess(build_dir: Path, lock_file: IO[str], timeout: float) -> str | None:
    """Build the kernel into `build_dir` in a child process, killing it and its compilers after `timeout` seconds;
    None on success, else why not."""
    arguments = {
        "name": _CPU_KERNEL_NAME,
        "sources": [str(_CPU_KERNEL_SOURCE)],
        "extra_cflags": _CPU_KERNEL_CFLAGS,
        "build_directory": str(build_dir),
    }
    logger.info(
        "Building the fused CPU selective scan in %s: once, 10-25 s on 2 cores (stopped after %g s, %s).",
        build_dir,
        timeout,
        BUILD_TIMEOUT_ENV_VAR,
    )
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-c", _BUILD_SCRIPT, json.dumps(arguments)],
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=build_dir,
            start_new_session=True,  # its own process group: ninja and the compilers can be killed with it
            pass_fds=(lock_file.fileno(),),  # holds our lock too, should this process die first
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"its build did not finish within {timeout:g} s ({BUILD_TIMEOUT_ENV_VAR}) and was stopped"
        finally:
            if process.returncode != 0:  # timed out, failed or interrupted: leave no compiler running
                _stop_process_group(process)
            process.stdin.close()
            _remove_stale_torch_lock(build_dir)  # the child is dead: a lock it left is stale
        if returncode != 0:
            output.seek(0)
            log = output.read().decode(errors="replace").strip()
            return f"its build failed (exit status {returncode}):\n{log[-3000:]}"
    logger.info("Built the fused CPU selective scan in %.1f s.", time.monotonic() - started)
    return None


def _build_and_load(timeout: float) -> str | None:
    """Load the kernel from torch's extensions folder, building it first if needed (see the module docstring);
    None on success, else why not."""
    from torch.utils import cpp_extension

    if fcntl is None:  # Windows: no lock tells a killed build from a live one; torch's own build, in-process
        cpp_extension.load(
            _CPU_KERNEL_NAME, [str(_CPU_KERNEL_SOURCE)], extra_cflags=_CPU_KERNEL_CFLAGS, is_python_module=False
        )
        return None
    # The folder `cpp_extension.load` uses (TORCH_EXTENSIONS_DIR, or a per-Python folder in torch's cache).
    build_dir = Path(cpp_extension._get_build_directory(_CPU_KERNEL_NAME, verbose=False))
    library = build_dir / f"{_CPU_KERNEL_NAME}{cpp_extension.LIB_EXT}"
    key = _build_key()
    key_file = build_dir / _BUILD_KEY_NAME
    deadline = time.monotonic() + timeout
    with _build_lock(build_dir, deadline) as lock_file:
        if lock_file is None:
            return (
                f"another process was still building it in {build_dir} after {timeout:g} s "
                f"({BUILD_TIMEOUT_ENV_VAR}); if none is, delete {build_dir / _BUILD_LOCK_NAME}"
            )
        _remove_stale_torch_lock(build_dir)  # we hold our lock, so no build is running
        built = library.is_file() and key_file.is_file() and key_file.read_text() == key
        if not built:
            if timeout == 0:
                return f"it is not built in {build_dir} and {BUILD_TIMEOUT_ENV_VAR}=0"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"waiting for another process's build took all of {timeout:g} s ({BUILD_TIMEOUT_ENV_VAR})"
            key_file.unlink(missing_ok=True)
            error = _build_in_subprocess(build_dir, lock_file, remaining)
            if error is not None:
                return error
            key_file.write_text(key)
        torch.ops.load_library(str(library))  # under the lock: nobody rebuilds it meanwhile
    return None


@torch.compiler.disable  # file system, compiler and dlopen: run eagerly even inside torch.compile
def _load_cpu_kernel() -> bool:
    """Build (or fetch from torch's extension cache) and load the fused CPU kernel; False if impossible."""
    global _cpu_kernel_loaded
    timeout = _build_timeout()
    _cpu_kernel_loaded = False
    if not _CPU_KERNEL_SOURCE.is_file():
        logger.info("Fused CPU selective scan source %s not found; using the 'torch' backend.", _CPU_KERNEL_SOURCE)
        return False
    try:
        error = _build_and_load(timeout)
    except Exception as exception:  # noqa: BLE001 -- no compiler, unwritable cache, op namespace already taken, ...
        error = str(exception)
    if error is not None:
        logger.warning("Fused CPU selective scan unavailable (%s); using the slower 'torch' backend.", error)
        return False
    _cpu_kernel_loaded = True
    return True


def _cpu_kernel_available() -> bool:
    # Reading the flag first keeps compiled graphs free of the (graph-breaking) loader once it has run.
    return _cpu_kernel_loaded if _cpu_kernel_loaded is not None else _load_cpu_kernel()


@torch.compiler.disable  # an import: run eagerly even inside torch.compile
def _import_cuda_kernel() -> None:
    global _cuda_scan_fn, _cuda_import_tried
    _cuda_import_tried = True
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 -- not installed, or installed without a working CUDA build
        return
    _cuda_scan_fn = selective_scan_fn


def _cuda_kernel() -> Callable[..., torch.Tensor] | None:
    """mamba-ssm's selective_scan_fn, or None when mamba-ssm (with its CUDA extension) does not import."""
    if not _cuda_import_tried:
        _import_cuda_kernel()
    return _cuda_scan_fn


def available_backends() -> tuple[str, ...]:
    """Backends usable in this process (besides "auto"). Builds the fused CPU kernel if not built yet."""
    names = ["torch", "reference"]
    if _cpu_kernel_available():
        names.insert(1, "cpu_fused")
    if _cuda_kernel() is not None and torch.cuda.is_available():
        names.insert(0, "cuda")
    return tuple(names)


def _check_backend_name(backend: str, source: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {backend!r} ({source}); expected one of {BACKENDS}.")


def _cpu_kernel_ready(build: bool) -> bool:
    """Whether the fused CPU kernel runs here. With `build=False`, a kernel this process has not tried yet is not
    built: it counts as available when what `cpp_extension.load` needs is there (its source, the C++ compiler
    `$CXX` or `c++`, and ninja). That forecast is wrong only when a present source then fails to compile."""
    if build or _cpu_kernel_loaded is not None:
        return _cpu_kernel_available()
    compiler = os.environ.get("CXX", "c++")
    return _CPU_KERNEL_SOURCE.is_file() and shutil.which(compiler) is not None and shutil.which("ninja") is not None


def _cuda_kernel_ready(build: bool) -> bool:
    """Whether mamba-ssm's kernel imports. With `build=False`, an import not tried yet is not tried: the package
    counts as importable when it is installed (it may still lack its CUDA extension, and then fail to import)."""
    if build or _cuda_import_tried:
        return _cuda_kernel() is not None
    return importlib.util.find_spec("mamba_ssm") is not None


def resolve_backend(backend: str = "auto", device_type: str = "cpu", build: bool = True) -> str:
    """The backend `selective_scan(..., backend=backend)` runs on tensors of `device_type` ("cpu", "cuda", ...) in
    this process: for "auto", what the module docstring says (`EVONETS_SCAN_BACKEND` included).

    `build=False` answers without building the fused CPU kernel or importing mamba-ssm, so that reporting the
    backend (e.g. in a latency fingerprint) changes nothing in the process. Once this process has tried a kernel
    the answer is exact; before, it is a forecast from what loading the kernel needs (`_cpu_kernel_ready`)."""
    _check_backend_name(backend, "backend argument")
    if backend == "auto":
        if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return "torch"
        override = os.environ.get(BACKEND_ENV_VAR, "")
        if override:
            _check_backend_name(override, f"environment variable {BACKEND_ENV_VAR}")
            backend = override
    if backend == "auto":
        if device_type == "cuda" and _cuda_kernel_ready(build):
            return "cuda"
        if device_type == "cpu" and _cpu_kernel_ready(build):
            return "cpu_fused"
        return "torch"
    if backend == "cpu_fused":
        if device_type != "cpu":
            raise ValueError(f"The 'cpu_fused' selective-scan backend needs CPU tensors, got {device_type} tensors.")
        return "cpu_fused" if _cpu_kernel_ready(build) else "torch"
    if backend == "cuda" and (device_type != "cuda" or not _cuda_kernel_ready(build)):
        raise RuntimeError(
            "The 'cuda' selective-scan backend needs CUDA tensors and an importable mamba-ssm "
            "(pip install mamba-ssm, built against your CUDA); use backend='torch' otherwise."
        )
    return backend


def _compute_dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """dt = softplus(delta + delta_bias) (or without the softplus), (batch, channels, length)."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """Sequential loop over time steps; the state is (batch, groups, channels per group, d_state)."""
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    dt = _compute_dt(delta, delta_bias, delta_softplus).view(batch, groups, -1, length)
    u_grouped = u.view(batch, groups, -1, length)
    A = A.view(groups, -1, d_state)
    state = u.new_zeros(batch, groups, channels // groups, d_state)
    outputs = []
    for t in range(length):
        dt_t = dt[..., t, None]
        state = torch.exp(dt_t * A) * state + dt_t * u_grouped[..., t, None] * B[:, :, None, :, t]
        outputs.append((state * C[:, :, None, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1).view(batch, channels, length)
    return y if D is None else y + D[:, None] * u


def _scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    """The chunked scan of the module docstring, in plain PyTorch ops."""
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    per_group = channels // groups
    dt = _compute_dt(delta, delta_bias, delta_softplus)
    dt_u = dt * u
    # As few chunks of at most TORCH_CHUNK_SIZE steps as possible, equally long, so padding stays < n_chunks
    # (e.g. 196 = 4 x 49 rather than 4 x 64 - 60). Ceiling divisions as (a + b - 1) // b: traced for ONNX,
    # -(-a // b) rounds toward zero.
    n_chunks = (length + TORCH_CHUNK_SIZE - 1) // TORCH_CHUNK_SIZE
    chunk = (length + n_chunks - 1) // n_chunks
    padding = n_chunks * chunk - length
    if padding:  # dt = 0 past the end: decay 1 and no input, and those outputs are cut off below
        dt, dt_u, B, C = (F.pad(x, (0, padding)) for x in (dt, dt_u, B, C))

    # One row per (chunk, batch, group), chunk-major so that chunks 0..K-2 are a prefix of the rows; a row's
    # state is a (per_group, d_state) matrix. With the in-chunk step t leading, step t of every chunk is one
    # slice: dt, dt_u (T, rows, per_group, 1); B (T, rows, 1, d_state); C (T, rows, d_state, 1). Then the
    # input term is a batched outer product and the read-out a batched mat-vec (baddbmm, bmm), which skips
    # materialising the products that a broadcast multiply-and-sum would write.
    rows = n_chunks * batch * groups
    dt, dt_u = (
        x.view(batch, groups, per_group, n_chunks, chunk).permute(4, 3, 0, 1, 2).reshape(chunk, rows, per_group, 1)
        for x in (dt, dt_u)
    )
    B = B.view(batch, groups, d_state, n_chunks, chunk).permute(4, 3, 0, 1, 2).reshape(chunk, rows, 1, d_state)
    C = C.view(batch, groups, d_state, n_chunks, chunk).permute(4, 3, 0, 1, 2).reshape(chunk, rows, d_state, 1)
    A = A.view(1, 1, groups, per_group, d_state).expand(n_chunks, batch, -1, -1, -1).reshape(rows, per_group, d_state)

    # 1. End states of chunks 0..K-2 started from zero (the last chunk's end state is never needed).
    # 2. From them, the state entering each chunk, sequentially over chunks.
    group_rows = batch * groups
    entering = [u.new_zeros(group_rows, per_group, d_state)]
    if n_chunks > 1:
        head = (n_chunks - 1) * group_rows
        dt_head, dt_u_head, B_head = (x.narrow(1, 0, head) for x in (dt, dt_u, B))
        A_head = A.narrow(0, 0, head)
        state = u.new_zeros(head, per_group, d_state)
        for t in range(chunk):
            state = torch.baddbmm(torch.exp(dt_head[t] * A_head) * state, dt_u_head[t], B_head[t])
        state = state.view(n_chunks - 1, group_rows, per_group, d_state)
        chunk_decay = torch.exp(dt.sum(0) * A).view(n_chunks, group_rows, per_group, d_state)
        for k in range(n_chunks - 1):
            entering.append(chunk_decay[k] * entering[-1] + state[k])
    state = torch.cat(entering, dim=0)  # (rows, per_group, d_state)

    # 3. Replay every chunk from its entering state and read out y.
    outputs = []
    for t in range(chunk):
        state = torch.baddbmm(torch.exp(dt[t] * A) * state, dt_u[t], B[t])
        outputs.append(torch.bmm(state, C[t]))  # (rows, per_group, 1)
    y = torch.stack(outputs).view(chunk, n_chunks, batch, groups, per_group).permute(2, 3, 4, 1, 0)
    y = y.reshape(batch, channels, n_chunks * chunk)[..., :length]
    return y if D is None else y + D[:, None] * u


class _FusedCpuScan(torch.autograd.Function):
    """Autograd wrapper of the C++ ops; B and C come time-major, (batch, groups, length, d_state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B_time_major, C_time_major, D, delta_bias, delta_softplus: bool):
        ctx.save_for_backward(u, delta, A, B_time_major, C_time_major, D, delta_bias)
        ctx.delta_softplus = delta_softplus
        return torch.ops.evonets_selective_scan.forward(
            u, delta, A, B_time_major, C_time_major, D, delta_bias, delta_softplus
        )

    @staticmethod
    def backward(ctx, grad_y):
        grads = torch.ops.evonets_selective_scan.backward(grad_y.contiguous(), *ctx.saved_tensors, ctx.delta_softplus)
        return (*grads, None)


def _scan_cpu_fused(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    channels = u.shape[1]
    # The kernel always takes D and delta_bias; zeros stand in for None (and get no gradient).
    D = u.new_zeros(channels) if D is None else D.contiguous()
    delta_bias = u.new_zeros(channels) if delta_bias is None else delta_bias.contiguous()
    return _FusedCpuScan.apply(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.transpose(-1, -2).contiguous(),
        C.transpose(-1, -2).contiguous(),
        D,
        delta_bias,
        delta_softplus,
    )


def _scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
) -> torch.Tensor:
    # mamba-ssm keeps u, delta, B and C in their dtype (computing in float32 inside) and wants float32
    # A, D and delta_bias.
    D, delta_bias = (None if x is None else x.float() for x in (D, delta_bias))
    return _cuda_kernel()(
        u, delta, A.float(), B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=False
    )


_SCANS = {"reference": _scan_reference, "torch": _scan_chunked, "cpu_fused": _scan_cpu_fused}


def _check_shapes(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
    if u.dim() != 3 or A.dim() != 2 or B.dim() != 4:
        raise ValueError(
            "Expected u (batch, channels, length), A (channels, d_state), B (batch, groups, d_state, length); "
            f"got u {tuple(u.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}"
        )
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    if groups == 0 or channels % groups != 0 or A.shape[0] != channels:
        raise ValueError(f"A must be ({channels}, d_state) and groups ({groups}) must divide channels ({channels})")
    expected = (batch, groups, d_state, length)
    if tuple(B.shape) != expected or tuple(C.shape) != expected or delta.shape != u.shape:
        raise ValueError(
            f"B and C must be {expected} and delta {tuple(u.shape)}; "
            f"got B {tuple(B.shape)}, C {tuple(C.shape)}, delta {tuple(delta.shape)}"
        )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Selective scan ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = <C_t, h_t> + D u_t``.

    See the module docstring for shapes, math and backends.

    Args:
        u, delta: (batch, channels, length).
        A: (channels, d_state), negative.
        B, C: (batch, groups, d_state, length) with channels divisible by groups.
        D, delta_bias: (channels,) or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: one of ``BACKENDS``.

    Returns:
        y: (batch, channels, length) in u's dtype.
    """
    if not torch.jit.is_tracing():  # traced (ONNX export), shapes are tensors and the checks only warn
        _check_shapes(u, delta, A, B, C)
    resolved = resolve_backend(backend, u.device.type)
    if resolved == "cuda":
        return _scan_cuda(u, delta, A, B, C, D, delta_bias, delta_softplus)
    inputs = [x if x is None else x.float() for x in (u, delta, A, B, C, D, delta_bias)]
    return _SCANS[resolved](*inputs, delta_softplus).to(u.dtype)


__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "BUILD_TIMEOUT_ENV_VAR",
    "DEFAULT_BUILD_TIMEOUT",
    "TORCH_CHUNK_SIZE",
    "available_backends",
    "resolve_backend",
    "selective_scan",
]
