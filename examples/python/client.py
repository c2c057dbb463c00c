#!/usr/bin/env python3
"""ccgw-bridge from Python: stock grpcio, stubs generated from the repository's proto/.

Run against a bridge (e.g. `cargo run -- --simulate` in another terminal), from the repository
root, with the packages of tests/python/requirements.txt (`scripts/test-deps` puts them in .venv/):

    .venv/bin/python examples/python/client.py --addr 127.0.0.1:50051 --agent 1001

--addr defaults to $CCGW_ADDR, then 127.0.0.1:50051: gRPC's target syntax, passed to grpcio as is.

What it shows:
  1. SignIn (returns the session the bridge holds if the agent is already signed in).
  2. BeginPlay with await_outcome: the call returns once the gateway reports the outcome.
  3. A watch that drops, and resumes exactly where it stopped (resume_after + session_id).
  4. A refused call decoded into google.rpc.ErrorInfo: reason, domain, metadata; and the retry
     rule (`may_retry`): which failures a client may retry, and which never (OUTCOME_UNKNOWN).
  5. SignOut (skipped with --keep-signed-in, e.g. for the --simulate demo agent).
Prints one JSON summary line on stdout; exits 1 with "client.py: FAILED: ..." on stderr otherwise.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

try:
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from grpc_tools import protoc
except ImportError as e:
    sys.exit(
        f"client.py: FAILED: {e}. Install the packages into a virtual environment "
        "(Debian's python3 refuses a bare pip install): run scripts/test-deps from the "
        "repository root, then use .venv/bin/python"
    )

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_stubs():
    """Generates the Python stubs of proto/ccgw/v1 into a temporary directory, imports them and
    removes the directory (the imported modules need their files no more)."""
    protos = [str(ROOT / "proto/ccgw/v1/recordplay.proto"), str(ROOT / "proto/ccgw/v1/session.proto")]
    # grpc_tools ships the well-known types (google/protobuf/*.proto) in its own package.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="ccgw-stubs-") as out:
        code = protoc.main(
            ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={out}",
             f"--grpc_python_out={out}", *protos]
        )
        if code != 0:
            sys.exit(f"client.py: FAILED: grpc_tools.protoc exited {code}")
        for pkg in ("ccgw", "ccgw/v1"):
            (pathlib.Path(out) / pkg / "__init__.py").touch()
        sys.path.insert(0, out)
        try:
            from ccgw.v1 import recordplay_pb2, recordplay_pb2_grpc, session_pb2, session_pb2_grpc
        finally:
            sys.path.remove(out)
    return recordplay_pb2, recordplay_pb2_grpc, session_pb2, session_pb2_grpc


rp, rpg, sp, spg = load_stubs()


class Failed(Exception):
    """A step did not go as documented."""


def error_info(err: grpc.RpcError):
    """The google.rpc.ErrorInfo of a failed call, or None (e.g. bad input carries a BadRequest)."""
    status = rpc_status.from_call(err)  # decodes the grpc-status-details-bin trailer
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


# The retry rule (docs/errors.md): UNAVAILABLE means the call surely did not take effect, and
# TOO_MANY_REQUESTS that it was refused before it started: retry those with back-off. UNKNOWN
# (OUTCOME_UNKNOWN, OUTCOME_NOT_OBSERVED) and DEADLINE_EXCEEDED mean it may have taken effect:
# never retry a BeginPlay then (watch the agent's events to learn what happened). Everything
# else needs a change first (input, state, credentials), not a retry.
NEVER_RETRY = {"OUTCOME_UNKNOWN", "OUTCOME_NOT_OBSERVED"}


def may_retry(err: grpc.RpcError) -> bool:
    info = error_info(err)
    reason = info.reason if info else ""
    if reason in NEVER_RETRY:
        return False
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "TOO_MANY_REQUESTS"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addr", default=os.environ.get("CCGW_ADDR", "127.0.0.1:50051"))
    ap.add_argument("--agent", default="1001")
    ap.add_argument("--phone", default="88001")
    ap.add_argument("--voice-path", default="/prompts/welcome.wav")
    ap.add_argument("--keep-signed-in", action="store_true")
    args = ap.parse_args()
    timeout = 20

    channel = grpc.insecure_channel(args.addr)
    sessions = spg.AgentSessionServiceStub(channel)
    play = rpg.RecordPlayServiceStub(channel)

    # 1. Sign in. The password comes from the environment, never from argv.
    session = sessions.SignIn(
        sp.SignInRequest(agent_id=args.agent, phone_number=args.phone,
                         password=os.environ.get("CCGW_AGENT_PASSWORD", "")),
        timeout=timeout,
    )
    print(f"signed in: agent {session.agent_id} session {session.session_id}", file=sys.stderr)

    # Where the session's event sequence stands before the play (to watch just what follows).
    before = sessions.GetSession(sp.GetSessionRequest(agent_id=args.agent),
                                 timeout=timeout).last_sequence

    # 2. Play and wait for the gateway's outcome event.
    played = play.BeginPlay(
        rp.BeginPlayRequest(agent_id=args.agent, voice_path=args.voice_path, await_outcome=True),
        timeout=timeout,
    )
    if not played.HasField("outcome_sequence"):
        raise Failed(f"await_outcome returned no outcome_sequence: {played}")
    outcome = played.outcome_sequence
    print(f"played: {played.message!r}, outcome event #{outcome}", file=sys.stderr)

    # 3. Watch from before the play (the bridge retains recent events), drop the stream after
    #    the first event, and resume after it.
    first_stream = play.WatchPlayEvents(
        rp.WatchPlayEventsRequest(agent_id=args.agent, session_id=session.session_id,
                                  resume_after=before),
        timeout=timeout,
    )
    first = next(first_stream)
    first_stream.cancel()  # the connection "drops"; remember where we were
    last_seen = first.sequence
    play.StopPlay(rp.StopPlayRequest(agent_id=args.agent), timeout=timeout)
    resumed = play.WatchPlayEvents(
        rp.WatchPlayEventsRequest(agent_id=args.agent, session_id=session.session_id,
                                  resume_after=last_seen),
        timeout=timeout,
    )
    sequences = [first.sequence]
    types = [rp.PlayEventType.Name(first.type)]
    for event in resumed:
        # Sequences count every event of the session; a play-event watch skips the others, so
        # they increase, without repeats, but need not be consecutive.
        if event.sequence <= sequences[-1]:
            raise Failed(f"out of order after resume: {sequences[-1]} then {event.sequence}")
        sequences.append(event.sequence)
        types.append(rp.PlayEventType.Name(event.type))
        if event.type == rp.PLAY_STOPPED:
            resumed.cancel()
            break
    if outcome not in sequences:
        raise Failed(f"outcome #{outcome} not among the watched events {sequences}")
    print(f"watched (resumed after #{last_seen}): {list(zip(sequences, types))}", file=sys.stderr)

    # 4. A refused call, decoded.
    try:
        play.StopPlay(rp.StopPlayRequest(agent_id="999998"), timeout=timeout)
        raise Failed("StopPlay for an agent nobody signed in succeeded")
    except grpc.RpcError as err:
        info = error_info(err)
        if info is None:
            raise Failed(f"no ErrorInfo in {err.code()} {err.details()}")
        refused = {"code": err.code().name, "reason": info.reason, "domain": info.domain,
                   "metadata": dict(info.metadata), "may_retry": may_retry(err)}
        print(f"refused as expected: {refused}", file=sys.stderr)

    # 5. Sign out.
    if not args.keep_signed_in:
        sessions.SignOut(sp.SignOutRequest(agent_id=args.agent), timeout=timeout)

    print(json.dumps({
        "summary": "ccgw python example ok",
        "agent_id": args.agent,
        "session_id": session.session_id,
        "outcome_sequence": outcome,
        "resumed_after": last_seen,
        "events": types,
        "refused": refused,
    }))


if __name__ == "__main__":
    try:
        main()
    except (Failed, grpc.RpcError, StopIteration) as e:
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        sys.exit(f"client.py: FAILED: {detail}")
