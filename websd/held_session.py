"""The RPC session of a `doit tune` runner worker (MetaSchedule's RPC runner, stages/tune.py):
opened for its first candidate and kept for the next ones. A session is a process that the RPC
server spawns and that imports TVM: 8-11 s each on the 4-GPU machine with the tuners busy
(bench/results/tuning/README.md), where a candidate takes well under a second to time.

A module of its own: the runner's worker processes import these functions by name, while a
function of `python3 -m stages.tune` (its __main__) travels to them by value, and so would the
session it keeps.
"""

from __future__ import annotations

import itertools

# The session, and the name of the candidate uploaded last.
_held: dict = {}
_uploads = itertools.count()


def held_session(config):
    """The worker's session on a server with the key of `config` (MetaSchedule's RPCConfig),
    asked of its tracker once. It has no time limit of its own: a candidate that runs past the
    runner's timeout kills the worker, and the session with it."""
    from tvm import rpc

    if "session" not in _held:
        tracker = rpc.connect_tracker(config.tracker_host, config.tracker_port)
        _held["session"] = tracker.request(config.tracker_key, session_timeout=0)
    return _held["session"]


def measure_or_drop_session(session, rt_mod, device, evaluator_config, repeated_args):
    """MetaSchedule's timing of a candidate. One that fails can leave the device unusable (e.g.
    after a launch failure): its session is dropped, and the next candidate opens a new one."""
    from tvm.s_tir.meta_schedule.runner.rpc_runner import default_run_evaluator

    try:
        return default_run_evaluator(session, rt_mod, device, evaluator_config, repeated_args)
    except Exception:
        _held.clear()
        raise


def upload_under_own_name(session, local_path: str, remote_path: str):
    """Upload a candidate and load it, under a name of its own (the builder names every one
    tvm_tmp_mod.tar): the session keeps the libraries it loaded, and one loaded again at a path
    already loaded may come back as the old one."""
    name = f"candidate-{next(_uploads)}.tar"
    session.upload(local_path, name)
    _held["uploaded"] = name
    return session.load_module(name)


def remove_upload(session, remote_path: str | None) -> None:
    """Remove the candidate's files from the session's folder (MetaSchedule's cleanup removes the
    folder too, which the next candidate needs)."""
    name = _held.pop("uploaded", None)
    if session is not None and name is not None and "session" in _held:
        session.remove(name)
        session.remove(name + ".so")
