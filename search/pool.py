"""DMMPE: an asynchronous, pull-based pool that evaluates many candidates at once, each whole on one worker.

EvoNAS's Distributed Multi-Model Parallel Evaluation, without its generation barrier: a worker that finishes a
candidate takes the next queued one at once, and results come back in the order they finish, so the optimizer can be
told each result and asked for a new candidate while the other workers keep going.

```python
>>> with EvaluationPool(functools.partial(make_evaluator, "runs/supernet"), workers=2) as pool:
...     while budget_left or pool.in_flight:
...         while budget_left and pool.idle_workers:
...             pool.submit(task_id, {"arch": encoding})
...         for task_id, result in pool.wait():
...             ...  # result = evaluate(payload) + {"worker": ..., "eval_seconds": ...}, or {"error": ...}
```

**Workers.** `make_evaluator` is a picklable zero-argument callable (e.g. a `functools.partial` of a module-level
function). Each worker process (started with multiprocessing's `"spawn"`) calls it once to load the model and data,
then calls the returned `evaluate(payload: dict) -> dict` once per task. A result is that dict plus `worker` (the
worker's id: `r<rank>w<slot>`, with `g<n>` appended for the n-th replacement of a dead worker), `eval_seconds` (wall
clock) and `eval_cpu_seconds` (the worker process's CPU time, steadier than wall clock on a busy machine). With
`distributed=True` the pool runs on rank 0 of an initialised `torch.distributed` group (`accelerate.Accelerator()`
under `accelerate launch`, or `torchrun`) and every other rank calls `serve(make_evaluator)`; each rank, rank 0
included, runs `workers` worker processes.

**Transport.** One mechanism for local and remote workers: a `torch.distributed.TCPStore` served by rank 0 on a port
chosen by the OS (rank 0 broadcasts its host and port to the other ranks with one `dist.broadcast` of an int tensor).
Every message is a JSON string in one of the store's FIFO queues (`queue_push` / blocking `queue_pop`); nothing is
pickled across the wire.

**Who can reach the store.** The store has no authentication: whoever can open a TCP connection to it can read and
inject messages (tasks, results), so the pool binds it as narrowly as the run allows (`resolve_bind_address`). When
every rank runs on this machine (one process, or `LOCAL_WORLD_SIZE == WORLD_SIZE` as `torchrun` / `accelerate launch`
set it, or a loopback `MASTER_ADDR`) it listens on loopback (127.0.0.1) only. Across machines it listens on the one
interface named by `bind_address` (an interface name such as `eth0`, an address of this machine, or a host name that
resolves to one), by default the interface whose address `MASTER_ADDR` resolves to: the network on which the
launcher's own rendezvous store (equally unauthenticated) already listens. `"0.0.0.0"` / `"::"` listen everywhere, and
only when asked. Keep multi-machine runs on a private network or behind a firewall (see `docs/search.md`).

- `dmmpe/events`: everything that happens, read by one dispatcher thread on rank 0, which owns the pool's state. A
  worker announces `ready` once its evaluator is built and sends a `result` after each task (which also means
  "ready for the next"); each rank's supervisor sends `hello` (its number of workers) once, a `heartbeat` every
  `HEARTBEAT_SECONDS`, and `dead` when one of its worker processes exits; `submit()` sends `submitted`.
- `dmmpe/inbox/<worker>`: the tasks handed to one worker. A free worker blocks on its inbox; the dispatcher pushes
  the next queued task into it as soon as the worker's `ready`/`result` arrives or a task is submitted. Because the
  dispatcher records who holds which task before pushing it, it always knows what a dead worker was doing.
- `dmmpe/control/<rank>` and `dmmpe/stopped`: `close()` tells every other rank to stop, and waits for them.

**Failures.** Each rank's supervisor watches its worker processes (`multiprocessing.connection.wait` on their
sentinels): when one exits (e.g. SIGKILL, out-of-memory kill), it reports `dead` and starts a replacement. The
dispatcher re-queues the dead worker's task at the front of the queue; a task that has killed `max_retries + 1`
workers comes back as an error result instead, so a candidate that crashes workers cannot stall the run. A remote
rank whose heartbeats stop for `heartbeat_timeout` seconds (measured on rank 0's clock, so clocks need not agree) is
declared gone: its tasks are re-queued the same way and its workers no longer count. An exception raised by
`evaluate` becomes `{"error": "<type>: <message>", "traceback": ...}` and the worker lives on. A worker that dies or
raises before its evaluator is built is not restarted: the pool's `wait()` raises, since every worker would fail
alike.

Workers are daemonic processes (they cannot start processes of their own) and ignore SIGINT, so Ctrl-C reaches only
the main process, whose `close()` (or the context manager) stops them.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import multiprocessing.synchronize
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from typing_extensions import Self

from evonets.engine.timer import Stopwatch

HEARTBEAT_SECONDS = 1.0
"""How often each rank's supervisor reports that it is alive (and rank 0's checks for silent ranks)."""

STOP_GRACE_SECONDS = 5.0
"""How long `close()` lets a worker finish its current task before terminating it."""

_EVENTS = "dmmpe/events"
_STOPPED = "dmmpe/stopped"
_CONNECT_TIMEOUT = datetime.timedelta(seconds=60)
_BLOCK_FOREVER = datetime.timedelta(days=365)  # blocking pops wait for a message, not for a clock
_ADDRESS_BYTES = 256  # room for the host name in the broadcast address tensor

LOOPBACK = "127.0.0.1"
"""Where the pool's store listens when every rank runs on this machine."""

_EVERY_INTERFACE = ("0.0.0.0", "::")


def _inbox(worker_id: str) -> str:
    return f"dmmpe/inbox/{worker_id}"


def _control(rank: int) -> str:
    return f"dmmpe/control/{rank}"


def _connect(host: str, port: int) -> dist.TCPStore:
    """A client of the pool's store whose blocking calls wait as long as it takes."""
    store = dist.TCPStore(host, port, is_master=False, timeout=_CONNECT_TIMEOUT)
    store.set_timeout(_BLOCK_FOREVER)
    return store


def _push(store: dist.TCPStore, queue: str, message: dict) -> None:
    store.queue_push(queue, json.dumps(message))


def _pop(store: dist.TCPStore, queue: str) -> dict:
    return json.loads(store.queue_pop(queue))


# Where the store listens --------------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _one_machine(world_size: int) -> bool:
    """Whether every rank runs on this machine, as far as the launcher's environment says."""
    if world_size == 1:
        return True
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    return (local.isdigit() and int(local) == world_size) or _is_loopback(os.environ.get("MASTER_ADDR", ""))


def _interface_address(name: str) -> str | None:
    """The IPv4 address of network interface `name` (Linux `SIOCGIFADDR`), None when it has none."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            reply = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(reply[20:24])


def _listen(address: str) -> socket.socket:
    """A TCP socket bound to `address` on a port chosen by the OS, listening."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        if address == "::":
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as "every interface" says
        listener.bind((address, 0))
        listener.listen(socket.SOMAXCONN)
    except BaseException:
        listener.close()
        raise
    return listener


def _local_addresses(host: str) -> list[str]:
    """The addresses `host` (an IP address or a host name) resolves to that a socket of this machine can bind."""
    try:
        candidates = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return []
        candidates = list(dict.fromkeys(info[4][0] for info in found))
    bindable = []
    for address in candidates:
        try:
            _listen(address).close()
        except OSError:
            continue
        bindable.append(address)
    return bindable


def resolve_bind_address(bind_address: str | None = None, world_size: int = 1) -> tuple[str, str]:
    """`(listen, advertise)`: the address the pool's store listens on, and the host the other ranks connect to.

    `bind_address` None: loopback when every rank runs on this machine (see the module docstring), else the interface
    of this machine whose address `MASTER_ADDR` resolves to. Otherwise an interface name (`eth0`; its IPv4 address),
    an IP address of this machine, a host name resolving to one, or `"0.0.0.0"` / `"::"` for every interface. Raises
    `ValueError` naming `bind_address` when nothing of this machine matches.
    """
    source = f"bind_address = {bind_address!r}"
    if bind_address is None:
        if _one_machine(world_size):
            return LOOPBACK, LOOPBACK
        master = os.environ.get("MASTER_ADDR", "")
        if not master:
            raise ValueError(
                f"{source} is invalid for a run of {world_size} ranks on several machines without MASTER_ADDR: "
                "expected an interface name or an address of this machine for the evaluation pool to listen on."
            )
        bind_address, source = master, f"bind_address = None (the interface of MASTER_ADDR = {master!r})"
    if not isinstance(bind_address, str) or not bind_address.strip() or bind_address != bind_address.strip():
        raise ValueError(
            f"{source} is invalid: expected an interface name, an address of this machine, or a host name that "
            "resolves to one."
        )
    if bind_address in _EVERY_INTERFACE:
        return bind_address, os.environ.get("MASTER_ADDR") or socket.getfqdn()
    interfaces = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    if bind_address in interfaces:
        address = _interface_address(bind_address)
        if address is None:
            raise ValueError(f"{source} is invalid: interface {bind_address!r} has no IPv4 address.")
        return address, address
    addresses = _local_addresses(bind_address)
    if not addresses:
        raise ValueError(
            f"{source} is invalid: expected an interface name (here: {', '.join(interfaces) or 'none found'}), an "
            "address of this machine, or a host name that resolves to one; nothing of this machine can listen there."
        )
    return addresses[0], addresses[0]


def _default_threads(workers: int) -> int:
    """Torch threads per worker: this machine's cores shared by its workers (and by the other ranks on it)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // (workers * ranks_here))


def _check_int_at_least(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} = {value!r} is invalid: expected an integer >= {minimum}.")


# Worker process ------------------------------------------------------------------------------------------------


def _run_task(evaluate: Callable[[dict], dict], payload: dict) -> dict:
    """`evaluate(payload)` as a JSON-able dict; an exception, or a result that is not a JSON-able dict, becomes an
    error result."""
    try:
        result = evaluate(payload)
        if not isinstance(result, dict):
            raise TypeError(f"evaluate() returned {type(result).__name__}, expected a dict")
        json.dumps(result)
        return dict(result)
    except Exception as error:  # noqa: BLE001 - whatever evaluate raises becomes this task's error result
        return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def _worker_main(
    host: str,
    port: int,
    rank: int,
    worker_id: str,
    make_evaluator: Callable[[], Callable],
    threads: int,
    built: multiprocessing.synchronize.Event,
) -> None:
    """Entry point of a worker process: build the evaluator, then evaluate the tasks of its inbox until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    store = _connect(host, port)
    try:
        evaluate = make_evaluator()
    except Exception as error:
        message = f"worker {worker_id} could not build its evaluator: {type(error).__name__}: {error}"
        _push(store, _EVENTS, {"kind": "broken", "error": message, "traceback": traceback.format_exc()})
        raise SystemExit(1) from error
    built.set()
    _push(store, _EVENTS, {"kind": "ready", "worker": worker_id, "rank": rank, "pid": os.getpid()})
    inbox = _inbox(worker_id)
    while True:
        message = _pop(store, inbox)
        if message["kind"] == "stop":
            return
        watch = Stopwatch()
        result = _run_task(evaluate, message["payload"])
        result.update(worker=worker_id, eval_seconds=watch.seconds, eval_cpu_seconds=watch.cpu_seconds)
        _push(store, _EVENTS, {"kind": "result", "worker": worker_id, "seq": message["seq"], "result": result})


# One rank's worker processes -----------------------------------------------------------------------------------


@dataclass
class _Slot:
    """One worker position of a rank; its process is replaced when it dies."""

    index: int
    worker_id: str = ""
    process: multiprocessing.process.BaseProcess | None = None
    built: multiprocessing.synchronize.Event | None = None  # set once the evaluator is built
    respawns: int = 0


class _WorkerGroup:
    """The worker processes of one rank. A supervisor thread reports each death to the dispatcher and starts a
    replacement, and sends this rank's heartbeat."""

    def __init__(
        self, host: str, port: int, rank: int, workers: int, make_evaluator: Callable, threads_per_worker: int | None
    ):
        self.host, self.port, self.rank = host, port, rank
        self.make_evaluator = make_evaluator
        self.threads = threads_per_worker or _default_threads(workers)
        self.context = multiprocessing.get_context("spawn")
        self.slots = [_Slot(index) for index in range(workers)]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake_reader, self.wake_writer = self.context.Pipe(duplex=False)
        self.store = _connect(host, port)
        self.supervisor = threading.Thread(target=self._supervise, name=f"dmmpe-supervisor-{rank}", daemon=True)

    def start(self) -> Self:
        with self.lock:
            for slot in self.slots:
                self._spawn(slot)
        self.supervisor.start()
        return self

    def _spawn(self, slot: _Slot) -> None:
        slot.worker_id = f"r{self.rank}w{slot.index}" + (f"g{slot.respawns}" if slot.respawns else "")
        slot.built = self.context.Event()
        slot.process = self.context.Process(
            target=_worker_main,
            args=(self.host, self.port, self.rank, slot.worker_id, self.make_evaluator, self.threads, slot.built),
            name=f"dmmpe-{slot.worker_id}",
            daemon=True,
        )
        slot.process.start()

    def _supervise(self) -> None:
        try:
            while not self.stopping.is_set():
                with self.lock:
                    sentinels = {slot.process.sentinel: slot for slot in self.slots if slot.process is not None}
                exited = multiprocessing.connection.wait([*sentinels, self.wake_reader], timeout=HEARTBEAT_SECONDS)
                with self.lock:
                    if self.stopping.is_set():
                        return
                    for sentinel in exited:
                        if sentinel in sentinels:
                            self._replace(sentinels[sentinel])
                _push(self.store, _EVENTS, {"kind": "heartbeat", "rank": self.rank})
        except dist.DistError:
            return  # the pool's store is gone (rank 0 ended): serve() reports it

    def _replace(self, slot: _Slot) -> None:
        process, worker_id = slot.process, slot.worker_id
        process.join()
        if not slot.built.is_set():
            # It never got as far as building its evaluator (its own "broken" message says why when it could):
            # a replacement would fail alike.
            error = f"worker {worker_id} exited with code {process.exitcode} before its evaluator was built"
            _push(self.store, _EVENTS, {"kind": "broken", "error": error})
            slot.process = None
            return
        _push(self.store, _EVENTS, {"kind": "dead", "worker": worker_id, "exitcode": process.exitcode})
        slot.respawns += 1
        self._spawn(slot)

    def close(self, graceful: bool = True) -> None:
        """Stop the supervisor, then every worker: a stop message and `STOP_GRACE_SECONDS` to finish its task (when
        `graceful`), then SIGTERM."""
        with self.lock:
            self.stopping.set()
        self.wake_writer.send(None)
        if self.supervisor.is_alive():
            self.supervisor.join()
        running = [slot for slot in self.slots if slot.process is not None and slot.process.is_alive()]
        if graceful:
            for slot in running:
                _push(self.store, _inbox(slot.worker_id), {"kind": "stop"})
        deadline = time.monotonic() + (STOP_GRACE_SECONDS if graceful else 0.0)
        for slot in running:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.terminate()
                slot.process.join()


# Rank 0: the pool ----------------------------------------------------------------------------------------------


@dataclass
class _Task:
    task_id: str
    payload: dict
    assigned_at: float = 0.0  # when a worker last took it
    deaths: int = 0


@dataclass
class _Rank:
    workers: int
    last_heartbeat: float
    gone: bool = False
    worker_ids: set[str] = field(default_factory=set)


def _check_pool_arguments(make_evaluator, workers, distributed, max_retries, heartbeat_timeout, threads_per_worker):
    """`EvaluationPool`'s arguments checked (errors name the argument); returns the world size."""
    _check_int_at_least("workers", workers, 1)
    _check_int_at_least("max_retries", max_retries, 0)
    if threads_per_worker is not None:
        _check_int_at_least("threads_per_worker", threads_per_worker, 1)
    if not isinstance(heartbeat_timeout, (int, float)) or heartbeat_timeout < 2 * HEARTBEAT_SECONDS:
        raise ValueError(
            f"heartbeat_timeout = {heartbeat_timeout!r} is invalid: expected seconds >= {2 * HEARTBEAT_SECONDS} "
            f"(twice the heartbeat interval)."
        )
    if not callable(make_evaluator):
        raise TypeError(f"make_evaluator = {make_evaluator!r} is invalid: expected a zero-argument callable.")
    if not distributed:
        return 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed = True needs an initialised torch.distributed process group: create "
            "accelerate.Accelerator() (under `accelerate launch`) or call torch.distributed.init_process_group."
        )
    if dist.get_rank() != 0:
        raise ValueError(
            f"EvaluationPool(distributed=True) runs on rank 0; rank {dist.get_rank()} must call serve() instead."
        )
    return dist.get_world_size()


def _serve_store(listen: str) -> tuple[dist.TCPStore, int]:
    """The pool's store, listening on `listen` only, and its port. TCPStore itself listens on every interface;
    handed a socket bound to one address, it listens there only."""
    listener = _listen(listen)
    port = listener.getsockname()[1]
    try:
        store = dist.TCPStore(
            listen,
            port,
            is_master=True,
            wait_for_workers=False,
            timeout=_CONNECT_TIMEOUT,
            master_listen_fd=listener.fileno(),
        )
    except BaseException:
        listener.close()
        raise
    listener.detach()  # the store owns the socket now
    store.set_timeout(_BLOCK_FOREVER)
    return store, port


class EvaluationPool:
    """Many candidates in flight, each evaluated whole by one worker; a free worker pulls the next task at once.

    Args:
        make_evaluator: picklable zero-argument callable run once in each worker; returns
            `evaluate(payload: dict) -> dict` (JSON-able).
        workers: worker processes of this rank (the other ranks choose theirs in `serve()`).
        distributed: spread the work over the ranks of the initialised `torch.distributed` group; this process must be
            rank 0 and every other rank must call `serve(make_evaluator)`.
        max_retries: how many times a task is re-queued after the worker evaluating it died; the next death makes it an
            error result.
        heartbeat_timeout: seconds of silence after which a remote rank counts as gone.
        threads_per_worker: `torch.set_num_threads` in each worker (default: the cores shared by the workers of all
            ranks on this machine, at least 1).
        bind_address: where the pool's store listens (see `resolve_bind_address`): None for loopback when every rank
            runs on this machine, else the interface of `MASTER_ADDR`; or an interface name or address to use.

    See the module docstring for the protocol. Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        make_evaluator: Callable[[], Callable[[dict], dict]],
        workers: int = 1,
        *,
        distributed: bool = False,
        max_retries: int = 2,
        heartbeat_timeout: float = 60.0,
        threads_per_worker: int | None = None,
        bind_address: str | None = None,
    ):
        world_size = _check_pool_arguments(
            make_evaluator, workers, distributed, max_retries, heartbeat_timeout, threads_per_worker
        )
        self.max_retries = max_retries
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.requeued = 0

        self._state = threading.Condition()
        self._tasks: dict[int, _Task] = {}  # in flight: queued or held by a worker, by sequence number
        self._sequence_of: dict[str, int] = {}
        self._queue: collections.deque[int] = collections.deque()
        self._free: collections.deque[str] = collections.deque()
        self._holding: dict[str, int] = {}  # worker -> task sequence number
        self._pids: dict[str, int] = {}
        self._finished: list[tuple[str, dict]] = []
        self._failure: str | None = None
        self._next_sequence = 0
        self._closed = False
        now = time.monotonic()
        self._ranks = {rank: _Rank(workers, last_heartbeat=now) for rank in range(world_size)}
        self._hello = {0}

        listen, advertise = resolve_bind_address(bind_address, world_size)
        self._server, port = _serve_store(listen)
        self.address = (listen, port)  # where the pool's store listens
        here = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(listen, listen)  # how this machine's processes reach it
        self._client = _connect(here, port)  # submit() and close(), from the caller's thread
        self._dispatcher = threading.Thread(
            target=self._dispatch, args=(_connect(here, port),), name="dmmpe-dispatcher", daemon=True
        )
        self._dispatcher.start()
        if world_size > 1:
            _broadcast_address(advertise, port)
        self._local: _WorkerGroup | None = None
        try:
            self._local = _WorkerGroup(here, port, 0, workers, make_evaluator, threads_per_worker).start()
            self._await_ranks()
        except BaseException:
            self.close()
            raise

    # Public API --------------------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def num_workers(self) -> int:
        """Evaluators of all ranks not gone (including any being restarted after a death)."""
        with self._state:
            return self._expected_workers()

    @property
    def in_flight(self) -> int:
        """Tasks submitted and not finished: queued or being evaluated."""
        with self._state:
            return len(self._tasks)

    @property
    def idle_workers(self) -> int:
        """How many more tasks to submit so that no worker waits: `num_workers - in_flight`, at least 0."""
        return max(0, self.num_workers - self.in_flight)

    @property
    def worker_pids(self) -> dict[str, int]:
        """Process id of every registered worker (of any rank: a remote pid is on that rank's machine)."""
        with self._state:
            return dict(self._pids)

    @property
    def running(self) -> dict[str, str]:
        """Task id -> id of the worker evaluating it, for the tasks handed to a worker."""
        with self._state:
            return {self._tasks[sequence].task_id: worker for worker, sequence in self._holding.items()}

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker has built its evaluator and registered (or `timeout`); True when all are."""
        with self._state:
            self._state.wait_for(lambda: self._failure or len(self._pids) >= self._expected_workers(), timeout)
            self._raise_failure()
            return len(self._pids) >= self._expected_workers()

    def submit(self, task_id: str, payload: dict) -> None:
        """Queue `evaluate(payload)`; a free worker takes it at once. `payload` must be JSON-able."""
        if not isinstance(task_id, str):
            raise TypeError(f"task_id = {task_id!r} is invalid: expected a string.")
        if not isinstance(payload, dict):
            raise TypeError(f"payload = {payload!r} is invalid: expected a dict.")
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as error:
            raise ValueError(f"payload of task {task_id!r} is invalid: not JSON-serialisable ({error}).") from error
        with self._state:
            if self._closed:
                raise RuntimeError("submit() on a closed EvaluationPool.")
            self._raise_failure()
            if task_id in self._sequence_of:
                raise ValueError(f"task_id = {task_id!r} is invalid: a task with this id is already in flight.")
            sequence = self._next_sequence
            self._next_sequence += 1
            self._tasks[sequence] = _Task(task_id, payload)
            self._sequence_of[task_id] = sequence
            self._queue.append(sequence)
            _push(self._client, _EVENTS, {"kind": "submitted"})

    def wait(self, timeout: float | None = None) -> list[tuple[str, dict]]:
        """`(task_id, result)` of every task finished since the last call, in completion order, as soon as there is
        at least one; `[]` after `timeout` seconds, or at once when nothing is in flight."""
        with self._state:
            self._state.wait_for(lambda: self._finished or self._failure or not self._tasks, timeout)
            self._raise_failure()
            finished, self._finished = self._finished, []
            return finished

    def drain(self) -> list[tuple[str, dict]]:
        """Wait for every task in flight; their results (and any not yet collected) in completion order."""
        with self._state:
            self._state.wait_for(lambda: self._failure or not self._tasks)
            self._raise_failure()
            finished, self._finished = self._finished, []
            return finished

    def close(self) -> None:
        """Stop every worker, on every rank; results not yet collected and tasks in flight are dropped."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            remote = [rank for rank, state in self._ranks.items() if rank and not state.gone]
            joined = [rank for rank in remote if rank in self._hello]
        for rank in remote:
            _push(self._client, _control(rank), {"kind": "stop"})
        if self._local is not None:
            self._local.close()
        if joined:
            self._client.set_timeout(datetime.timedelta(seconds=self.heartbeat_timeout))
            try:
                for _ in joined:
                    self._client.queue_pop(_STOPPED)
            except dist.DistError:
                pass  # a rank that does not answer is gone; its workers end when the store does
        _push(self._client, _EVENTS, {"kind": "shutdown"})
        self._dispatcher.join()
        self._client = self._server = None  # the store server stops; orphaned remote workers end with it

    # Dispatcher thread -------------------------------------------------------------------------------------------

    def _dispatch(self, store: dist.TCPStore) -> None:
        """Handle events one by one: the only writer of the pool's state besides `submit()`."""
        try:
            while True:
                event = _pop(store, _EVENTS)
                with self._state:
                    if event["kind"] == "shutdown":
                        return
                    getattr(self, f"_on_{event['kind']}")(event)
                    self._check_heartbeats()
                    self._assign(store)
                    self._state.notify_all()
        except Exception as error:  # noqa: BLE001 - e.g. a store failure: make wait() raise rather than hang
            with self._state:
                self._failure = f"the DMMPE dispatcher stopped: {type(error).__name__}: {error}"
                self._state.notify_all()

    def _on_submitted(self, event: dict) -> None:
        pass  # only wakes the dispatcher to hand the new task to a free worker

    def _on_hello(self, event: dict) -> None:
        rank = self._ranks[event["rank"]]
        rank.workers, rank.last_heartbeat = event["workers"], time.monotonic()
        self._hello.add(event["rank"])

    def _on_heartbeat(self, event: dict) -> None:
        self._ranks[event["rank"]].last_heartbeat = time.monotonic()

    def _on_ready(self, event: dict) -> None:
        rank = self._ranks[event["rank"]]
        if rank.gone:
            return
        rank.worker_ids.add(event["worker"])
        self._pids[event["worker"]] = event["pid"]
        self._free.append(event["worker"])

    def _on_result(self, event: dict) -> None:
        worker = event["worker"]
        if self._holding.get(worker) == event["seq"]:
            del self._holding[worker]
        if event["seq"] in self._tasks:  # else a re-queued task that another worker finished first
            self._finish(event["seq"], event["result"])
        if worker in self._pids:
            self._free.append(worker)

    def _on_dead(self, event: dict) -> None:
        self._forget_worker(event["worker"], f"exit code {event['exitcode']}")

    def _on_broken(self, event: dict) -> None:
        if self._failure is None:  # keep the first report: the worker's own, with its traceback
            self._failure = event["error"] + (f"\n{event['traceback']}" if event.get("traceback") else "")

    def _forget_worker(self, worker: str, cause: str) -> None:
        """Drop a dead worker; re-queue its task, or fail it after `max_retries` re-queues."""
        self._pids.pop(worker, None)
        if worker in self._free:
            self._free.remove(worker)
        sequence = self._holding.pop(worker, None)
        if sequence is None or sequence not in self._tasks:
            return
        task = self._tasks[sequence]
        task.deaths += 1
        if task.deaths > self.max_retries:
            error = (
                f"WorkerDied: {task.deaths} workers died evaluating this task (max_retries = {self.max_retries}); "
                f"the last, {worker}, with {cause}"
            )
            self._finish(
                sequence, {"error": error, "worker": worker, "eval_seconds": time.monotonic() - task.assigned_at}
            )
        else:
            self._queue.appendleft(sequence)
            self.requeued += 1

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for number, rank in self._ranks.items():
            if number and not rank.gone and now - rank.last_heartbeat > self.heartbeat_timeout:
                rank.gone = True
                for worker in sorted(rank.worker_ids):
                    self._forget_worker(worker, f"no heartbeat from rank {number} for {self.heartbeat_timeout:g} s")

    def _assign(self, store: dist.TCPStore) -> None:
        while self._queue and self._free and not self._closed:
            sequence = self._queue.popleft()
            if sequence not in self._tasks:
                continue
            worker, task = self._free.popleft(), self._tasks[sequence]
            task.assigned_at = time.monotonic()
            self._holding[worker] = sequence
            _push(store, _inbox(worker), {"kind": "task", "seq": sequence, "payload": task.payload})

    def _finish(self, sequence: int, result: dict) -> None:
        task = self._tasks.pop(sequence)
        del self._sequence_of[task.task_id]
        self._finished.append((task.task_id, result))

    def _expected_workers(self) -> int:
        return sum(rank.workers for rank in self._ranks.values() if not rank.gone)

    def _raise_failure(self) -> None:
        if self._failure:
            raise RuntimeError(self._failure)

    def _await_ranks(self) -> None:
        """Wait until every other rank's supervisor said hello (and how many workers it runs)."""
        if len(self._ranks) == 1:
            return
        with self._state:
            everyone = set(self._ranks)
            if not self._state.wait_for(lambda: self._hello == everyone or self._failure, self.heartbeat_timeout):
                missing = sorted(everyone - self._hello)
                raise RuntimeError(
                    f"ranks {missing} did not join the evaluation pool within {self.heartbeat_timeout:g} s: every rank "
                    f"other than 0 must call search.pool.serve(make_evaluator)."
                )
            self._raise_failure()


# Other ranks ---------------------------------------------------------------------------------------------------


def _address_device() -> torch.device:
    """Where a tensor for a collective of the default group must live (NCCL needs the GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_address(host: str, port: int) -> None:
    encoded = host.encode()
    if len(encoded) > _ADDRESS_BYTES:
        raise ValueError(f"host name {host!r} is too long to broadcast (over {_ADDRESS_BYTES} bytes).")
    address = torch.zeros(2 + _ADDRESS_BYTES, dtype=torch.int64)
    address[0], address[1] = port, len(encoded)
    address[2 : 2 + len(encoded)] = torch.tensor(list(encoded))
    dist.broadcast(address.to(_address_device()), src=0)


def _receive_address() -> tuple[str, int]:
    address = torch.zeros(2 + _ADDRESS_BYTES, dtype=torch.int64, device=_address_device())
    dist.broadcast(address, src=0)
    address = address.cpu()
    port, length = int(address[0]), int(address[1])
    return bytes(address[2 : 2 + length].tolist()).decode(), port


def serve(
    make_evaluator: Callable[[], Callable[[dict], dict]], workers: int = 1, *, threads_per_worker: int | None = None
) -> None:
    """Run `workers` evaluators for rank 0's `EvaluationPool(distributed=True)` until the pool closes.

    Call it on every rank other than 0 of an initialised `torch.distributed` group, at the point where rank 0 creates
    the pool (the two meet in one `dist.broadcast` of the pool's address).
    """
    _check_int_at_least("workers", workers, 1)
    if threads_per_worker is not None:
        _check_int_at_least("threads_per_worker", threads_per_worker, 1)
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("serve() needs an initialised torch.distributed process group.")
    rank = dist.get_rank()
    if rank == 0:
        raise ValueError("serve() runs on the ranks other than 0; rank 0 creates the EvaluationPool(distributed=True).")
    host, port = _receive_address()
    store = _connect(host, port)
    _push(store, _EVENTS, {"kind": "hello", "rank": rank, "workers": workers})
    group = _WorkerGroup(host, port, rank, workers, make_evaluator, threads_per_worker).start()
    try:
        _pop(store, _control(rank))
    except dist.DistError as error:
        group.close(graceful=False)
        raise RuntimeError(f"rank {rank} lost the evaluation pool on rank 0 ({host}:{port}): {error}") from error
    except BaseException:
        group.close(graceful=False)
        raise
    group.close()
    store.queue_push(_STOPPED, str(rank))


__all__ = ["HEARTBEAT_SECONDS", "LOOPBACK", "EvaluationPool", "resolve_bind_address", "serve"]
