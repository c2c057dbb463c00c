#!/usr/bin/env python3
"""Cross-language check of ccgw-bridge against its own .proto files, with stock grpcio.

The stubs are generated elsewhere (tests/e2e/python.rs does it) and found on PYTHONPATH:

    python3 -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT \
        proto/ccgw/v1/recordplay.proto proto/ccgw/v1/session.proto
    PYTHONPATH=OUT .venv/bin/python tests/python/client.py --addr 127.0.0.1:50051 --agent 1001

(`scripts/test-deps` creates .venv/ with the packages; examples/python/ is the user-facing
example.)

Steps: SignIn -> WatchPlayEvents (background thread) -> BeginPlay(await_outcome) -> StopPlay ->
the watcher saw PLAY_STARTED < PLAY_SUCCEEDED < PLAY_STOPPED with the session's id -> an empty
voice_path is INVALID_ARGUMENT -> SignOut -> the stream ends cleanly. Prints one JSON summary line
on stdout and exits 0; on any failure prints "client.py: FAILED: ..." on stderr and exits 1.
Every wait is bounded, so the script cannot hang.
"""

import argparse
import json
import sys
import threading
import time

try:
    import grpc
except ImportError:
    sys.exit(
        "client.py: FAILED: grpcio is not installed for this Python; run scripts/test-deps "
        "(it creates .venv/ with python3 -m venv and installs tests/python/requirements.txt) "
        "and use .venv/bin/python"
    )

try:
    from ccgw.v1 import recordplay_pb2, recordplay_pb2_grpc, session_pb2, session_pb2_grpc
except ImportError as e:
    sys.exit(
        f"client.py: FAILED: cannot import the generated stubs ({e}); generate them with "
        ".venv/bin/python -m grpc_tools.protoc -I proto --python_out=OUT --grpc_python_out=OUT "
        "proto/ccgw/v1/recordplay.proto proto/ccgw/v1/session.proto and put OUT on PYTHONPATH"
    )


class Failed(Exception):
    """A check did not hold."""


def check(cond, msg):
    if not cond:
        raise Failed(msg)


class Watcher(threading.Thread):
    """Reads one WatchPlayEvents stream to its end, recording events and how it ended."""

    def __init__(self, stub, agent, timeout):
        super().__init__(daemon=True)
        self.call = stub.WatchPlayEvents(
            recordplay_pb2.WatchPlayEventsRequest(agent_id=agent), timeout=timeout
        )
        self.subscribed = threading.Event()
        self.lock = threading.Lock()
        self.events = []
        self.error = None
        self.completed = False

    def run(self):
        try:
            # The server sends response headers once the subscription exists: events produced
            # after this point are delivered to this stream.
            self.call.initial_metadata()
            self.subscribed.set()
            for event in self.call:
                with self.lock:
                    self.events.append(event)
            self.completed = True
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.subscribed.set()

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def wait_for(self, event_type, timeout):
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if any(e.type == event_type for e in self.snapshot()):
                return True
            if not self.is_alive():
                return False
            time.sleep(0.02)
        return False


def describe(err):
    return f"{err.code().name}: {err.details()}"


def run(args):
    timeout = args.timeout
    with grpc.insecure_channel(args.addr) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Failed(f"no connection to the bridge at {args.addr} within {timeout}s")
        sessions = session_pb2_grpc.AgentSessionServiceStub(channel)
        play = recordplay_pb2_grpc.RecordPlayServiceStub(channel)

        session = sessions.SignIn(
            session_pb2.SignInRequest(
                agent_id=args.agent, password="", phone_number=args.phone
            ),
            timeout=timeout,
        )
        check(session.agent_id == args.agent, f"SignIn returned agent {session.agent_id!r}")
        check(session.session_id != "", "SignIn returned no session_id")
        check(
            session.state == session_pb2.SESSION_STATE_SIGNED_IN,
            f"SignIn returned state {session_pb2.SessionState.Name(session.state)}",
        )

        # The stream's own deadline bounds the whole test; it normally ends at SignOut.
        watcher = Watcher(play, args.agent, timeout=6 * timeout)
        watcher.start()
        check(watcher.subscribed.wait(timeout), "WatchPlayEvents did not start in time")
        check(
            watcher.error is None,
            f"WatchPlayEvents failed: {describe(watcher.error) if watcher.error else ''}",
        )

        begun = play.BeginPlay(
            recordplay_pb2.BeginPlayRequest(
                agent_id=args.agent, voice_path="/prompts/welcome.wav", await_outcome=True
            ),
            timeout=timeout,
        )
        check(
            begun.HasField("outcome_sequence"),
            "BeginPlay with await_outcome returned no outcome_sequence",
        )
        play.StopPlay(recordplay_pb2.StopPlayRequest(agent_id=args.agent), timeout=timeout)
        check(
            watcher.wait_for(recordplay_pb2.PLAY_STOPPED, timeout),
            f"the watcher saw no PLAY_STOPPED within {timeout}s "
            f"(got {[recordplay_pb2.PlayEventType.Name(e.type) for e in watcher.snapshot()]}, "
            f"error {describe(watcher.error) if watcher.error else None})",
        )

        events = watcher.snapshot()
        names = [recordplay_pb2.PlayEventType.Name(e.type) for e in events]
        seqs = [e.sequence for e in events]
        check(
            all(a < b for a, b in zip(seqs, seqs[1:])),
            f"sequences not increasing: {list(zip(names, seqs))}",
        )
        for e in events:
            check(
                e.session_id == session.session_id,
                f"event {e.sequence} has session_id {e.session_id!r}, "
                f"expected {session.session_id!r}",
            )
            check(e.agent_id == args.agent, f"event {e.sequence} has agent_id {e.agent_id!r}")
            check(e.HasField("received_at"), f"event {e.sequence} has no received_at")

        def first(t):
            for e in events:
                if e.type == t:
                    return e
            raise Failed(
                f"the watcher saw no {recordplay_pb2.PlayEventType.Name(t)}; got {names}"
            )

        started = first(recordplay_pb2.PLAY_STARTED)
        succeeded = first(recordplay_pb2.PLAY_SUCCEEDED)
        stopped = first(recordplay_pb2.PLAY_STOPPED)
        check(
            started.sequence < succeeded.sequence < stopped.sequence,
            f"order: started {started.sequence}, succeeded {succeeded.sequence}, "
            f"stopped {stopped.sequence}",
        )
        check(
            succeeded.event_type == "AgentMediaEvent_Play_Succ",
            f"PLAY_SUCCEEDED carries event_type {succeeded.event_type!r}",
        )
        check(
            begun.outcome_sequence == succeeded.sequence,
            f"BeginPlay outcome_sequence {begun.outcome_sequence} != "
            f"PLAY_SUCCEEDED sequence {succeeded.sequence}",
        )

        # Bad input: INVALID_ARGUMENT with a google.rpc.BadRequest naming the field.
        try:
            play.BeginPlay(
                recordplay_pb2.BeginPlayRequest(agent_id=args.agent, voice_path=""),
                timeout=timeout,
            )
            raise Failed("BeginPlay with an empty voice_path succeeded")
        except grpc.RpcError as e:
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                f"empty voice_path gave {describe(e)}, expected INVALID_ARGUMENT",
            )
            details = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin", b"")
            check(
                b"voice_path" in details,
                "INVALID_ARGUMENT carries no status details naming voice_path",
            )

        sessions.SignOut(session_pb2.SignOutRequest(agent_id=args.agent), timeout=timeout)
        watcher.join(timeout)
        check(not watcher.is_alive(), f"the play event stream did not end within {timeout}s of SignOut")
        check(
            watcher.error is None and watcher.completed,
            f"the play event stream ended with {describe(watcher.error) if watcher.error else '?'}"
            ", expected a clean end (OK) after SignOut",
        )

        return {
            "summary": "ccgw python client ok",
            "ok": True,
            "grpcio": grpc.__version__,
            "agent_id": args.agent,
            "session_id": session.session_id,
            "events": [[n, s] for n, s in zip(names, seqs)],
            "outcome_sequence": begun.outcome_sequence,
        }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", required=True, help="bridge gRPC address, host:port")
    p.add_argument("--agent", default="1001", help="agent id (default 1001)")
    p.add_argument("--phone", default="88001", help="phone number for SignIn (default 88001)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    args = p.parse_args()
    try:
        summary = run(args)
    except Failed as e:
        print(f"client.py: FAILED: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"client.py: FAILED: unexpected gRPC error {describe(e)}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
