# -*- test-case-name: tests.unit.cache.test_index -*-
"""
Where the cache's blocking work runs: SQLite on one dedicated thread, disk
reads and fsyncs on a small pool, never on the reactor thread.  Tests pass
L{runSynchronously} instead, so they need no threads at all.
"""

from __future__ import annotations

import functools
from collections.abc import Coroutine
from typing import Any, Callable, ParamSpec, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
P = ParamSpec("P")


class Runner(Protocol):
    """
    Runs a blocking call somewhere and fires with its result.
    """

    def __call__(self, f: Callable[..., T], *args: Any) -> Deferred[T]: ...


def runSynchronously(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    A L{Runner} for tests: the call runs at once, on the calling thread.
    """
    try:
        result = f(*args)
    except BaseException:
        return fail(Failure())
    return succeed(result)


def poolRunner(reactor: IReactorThreads, pool: ThreadPool) -> Runner:
    """
    A L{Runner} that hands each call to C{pool}.
    """

    def run(f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(reactor, pool, f, *args)  # type: ignore[arg-type]

    return run


def startedPool(reactor: IReactorCore, name: str, size: int) -> ThreadPool:
    """
    A thread pool of C{size} threads, started now and stopped when the
    reactor shuts down.  With C{size} 1 every call runs on the same thread,
    in order, which is what one SQLite connection wants.
    """
    pool = ThreadPool(minthreads=size, maxthreads=size, name=name)
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", stopPool, pool)
    return pool


def stopPool(pool: ThreadPool) -> None:
    """
    Stop C{pool} unless it was stopped already.
    """
    if pool.started:
        pool.stop()


def deferred(f: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """
    Make the coroutine function C{f} return a L{Deferred}, as the cache's
    callers (and its contract) expect.
    """

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper
