"""How many OpenMP threads a call gets: defaults, small calls, concurrent calls, fork."""

import os
import threading

from roialign_cy import _kernels
from roialign_cy._validate import check_int

# Below this many (RoI x channel x bin) outputs a call runs on one thread: waking a thread
# team costs more than it saves.
_SERIAL_WORK = 1 << 14


class _ThreadState:
    """Whether this process started an OpenMP team, and whether it is a fork of one that did.

    GNU libgomp's thread pool does not survive fork(): a child that starts a team after its
    parent did hangs. Such children run every call on one thread instead.
    """

    team_started = False
    forked_after_team = False


def _after_fork_in_child():
    """os.register_at_fork hook: a child of a process with a live team must stay serial."""
    _ThreadState.forked_after_team = _ThreadState.team_started


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ThreadTeam:
    """Context manager giving one kernel call its OpenMP team size.

    Calls with num_threads=None that run at the same time from several Python threads share
    OpenMP's default size between them instead of each starting a full team (which would
    oversubscribe the cores: 8 pool threads x 16 OpenMP threads on 16 cores). An explicit
    num_threads is used as given. Results do not depend on the team size.
    """

    _lock = threading.Lock()
    _active = 0  # default-sized multi-threaded calls running right now

    __slots__ = ("n_threads", "shared")

    def __init__(self, n_threads, shared):
        self.n_threads = n_threads
        self.shared = shared and n_threads > 1

    def __enter__(self):
        if not self.shared:
            return self.n_threads
        with ThreadTeam._lock:
            ThreadTeam._active += 1
            active = ThreadTeam._active
        return max(1, self.n_threads // active)

    def __exit__(self, *exc_info):
        if self.shared:
            with ThreadTeam._lock:
                ThreadTeam._active -= 1


_SERIAL_TEAM = ThreadTeam(1, False)


def team(num_threads, work):
    """The ThreadTeam for a call of `work` output elements (see team_size)."""
    n_threads = team_size(num_threads, work)
    if n_threads == 1:
        return _SERIAL_TEAM  # one thread: nothing to share, so one instance serves every call
    return ThreadTeam(n_threads, num_threads is None)


def team_size(num_threads, work):
    """The thread count for a call of `work` output elements: None means OpenMP's default.

    Capped by the work (tiny calls run on one thread) and 1 in a serial build or in a
    process forked after this one started a thread team.
    """
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", minimum=1)
    if work < _SERIAL_WORK or not _kernels.OPENMP_ENABLED or _ThreadState.forked_after_team:
        return 1  # checked above all the same: a bad num_threads fails on any call
    requested = _kernels.openmp_max_threads() if num_threads is None else num_threads
    n_threads = max(1, min(requested, work // _SERIAL_WORK))
    if n_threads > 1:
        _ThreadState.team_started = True
    return n_threads
