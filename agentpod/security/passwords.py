"""Password hashing with argon2id (parameters from argon2-cffi's RFC 9106 low-memory profile).

One hash or verification is 50-200 ms of CPU and 64 MiB of memory by design. It runs in a small
dedicated thread pool at the lowest CPU priority, never on the event loop: on the loop, 16 concurrent
wrong-password sign-ins held every other request of the process behind them (``GET /api/users/me``
4 ms → 381 ms median). argon2-cffi releases the GIL while it works, so the loop keeps serving
meanwhile. The pool has a fixed number of threads (``AGENTPOD_PASSWORD_WORKERS``): more sign-ins than
threads wait in its queue for a free one, so a burst costs neither more threads nor more memory (64 MiB
per thread at most). Benchmark: ``python -m bench sign_in_storm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from agentpod.settings import default_password_workers

_hasher = PasswordHasher()

# Verifying against this when the email is unknown makes "no such user" cost the same time
# as "wrong password", so response timing does not reveal which emails have accounts.
_DUMMY_HASH = _hasher.hash("agentpod-timing-equaliser")

# The niceness of the hashing threads (Linux): 19, the lowest priority there is. A hash is all CPU, and
# with the pool busy the event loop had to share the cores with it: during 16 concurrent wrong-password
# sign-ins on 2 CPUs, /users/me p99 was 60 ms at niceness 0, 23 ms at 10, 11-15 ms at 19. The hashing
# still gets every cycle the loop leaves, and a share however busy the machine is: sign-ins are slower
# only while the CPUs are short, and they absorb that wait instead of every other request.
NICENESS = 19

_pool: ThreadPoolExecutor | None = None
_size = default_password_workers()


def _yield_to_the_loop() -> None:
    # Each pool thread, as it starts. On Linux niceness is per thread, and the threads argon2 starts
    # for its lanes inherit it. Lowering one's own priority needs no privilege.
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)


def start_workers(size: int) -> None:
    """Size the pool (the API's lifespan, from the setting); it is created on first use."""
    global _size
    if size < 1:
        raise ValueError("the password pool needs at least one thread")
    stop_workers()
    _size = size


def stop_workers() -> None:
    """Let the pool's threads end once their queued work is done (the API's lifespan, at shutdown).

    Work already queued still runs, so a request in flight gets its answer; a later call starts a
    new pool.
    """
    global _pool
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False)


def _workers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_size, thread_name_prefix="argon2", initializer=_yield_to_the_loop)
    return _pool


def _hash(password: str) -> str:
    return _hasher.hash(password)


def _verify(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salted, self-describing), computed in the password pool."""
    return await asyncio.get_running_loop().run_in_executor(_workers(), _hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches, checked in the password pool; also spends the same work when
    there is no hash (unknown email)."""
    return await asyncio.get_running_loop().run_in_executor(_workers(), _verify, password_hash, password)
