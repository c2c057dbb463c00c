#!/usr/bin/env node
// ccgw-bridge from Node: plain @grpc/grpc-js, stubs loaded from the repository's proto/ by
// @grpc/proto-loader. Run against a bridge (e.g. `cargo run -- --simulate` elsewhere):
//
//   (cd examples/node && npm ci)          # or scripts/test-deps from the repository root
//   node examples/node/client.js --addr 127.0.0.1:50051 --agent 1001 [--keep-signed-in]
//
// --addr defaults to $CCGW_ADDR, then 127.0.0.1:50051: gRPC's target syntax, passed as is.
// Same steps as examples/python/client.py: SignIn, BeginPlay with await_outcome, a watch that
// drops and resumes after the last event it saw, a refused call decoded into
// google.rpc.ErrorInfo (grpc-js hands the details over as raw bytes in the
// `grpc-status-details-bin` trailer), the retry rule, SignOut. Prints one JSON summary line.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '../../proto');

function parseArgs(argv) {
  const args = {
    addr: process.env.CCGW_ADDR || '127.0.0.1:50051',
    agent: '1001',
    phone: '88001',
    voicePath: '/prompts/welcome.wav',
    keepSignedIn: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      return argv[++i];
    };
    if (flag === '--addr') args.addr = value();
    else if (flag === '--agent') args.agent = value();
    else if (flag === '--phone') args.phone = value();
    else if (flag === '--voice-path') args.voicePath = value();
    else if (flag === '--keep-signed-in') args.keepSignedIn = true;
    else throw new Error(`unknown argument ${flag}`);
  }
  return args;
}

function loadApi() {
  const def = protoLoader.loadSync(['ccgw/v1/recordplay.proto', 'ccgw/v1/session.proto'], {
    includeDirs: [PROTO_DIR],
    keepCase: true, // field names as in the proto (agent_id)
    longs: String, // uint64 sequences as decimal strings: no precision loss
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def).ccgw.v1;
}

// google.rpc.Status and the details the bridge sends, declared by their wire numbers (the
// same messages as google/rpc/status.proto and error_details.proto).
const rpc = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'Any', id: 3 },
              },
            },
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const Status = rpc.lookupType('google.rpc.Status');
const ErrorInfo = rpc.lookupType('google.rpc.ErrorInfo');
const BadRequest = rpc.lookupType('google.rpc.BadRequest');

/** Decodes a failed call's details: { reason, domain, metadata, fieldViolations }. */
function errorDetails(err) {
  const raw = err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  const out = { reason: '', domain: '', metadata: {}, fieldViolations: [] };
  if (!raw) return out;
  const status = Status.decode(raw);
  for (const any of status.details) {
    const type = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    if (type === 'google.rpc.ErrorInfo') {
      const info = ErrorInfo.toObject(ErrorInfo.decode(any.value), { defaults: true });
      Object.assign(out, { reason: info.reason, domain: info.domain, metadata: info.metadata });
    } else if (type === 'google.rpc.BadRequest') {
      out.fieldViolations = BadRequest.decode(any.value).field_violations.map((v) => ({
        field: v.field,
        description: v.description,
      }));
    }
  }
  return out;
}

// The retry rule (docs/errors.md): UNAVAILABLE means the call surely did not take effect and
// TOO_MANY_REQUESTS that it was refused before it started: retry with back-off. UNKNOWN
// (OUTCOME_UNKNOWN, OUTCOME_NOT_OBSERVED) and DEADLINE_EXCEEDED mean it may have taken effect:
// never retry a BeginPlay then. Everything else needs a change first, not a retry.
const NEVER_RETRY = new Set(['OUTCOME_UNKNOWN', 'OUTCOME_NOT_OBSERVED']);
function mayRetry(err) {
  const { reason } = errorDetails(err);
  if (NEVER_RETRY.has(reason)) return false;
  if (err.code === grpc.status.UNAVAILABLE) return true;
  return err.code === grpc.status.RESOURCE_EXHAUSTED && reason === 'TOO_MANY_REQUESTS';
}

const deadline = () => ({ deadline: Date.now() + 20000 });
const unary = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, deadline(), (err, res) => (err ? reject(err) : resolve(res))),
  );

/** Reads a server stream until `stop(event)` is true; then cancels it. Returns the events. */
function readUntil(stream, stop) {
  return new Promise((resolve, reject) => {
    const events = [];
    let done = false;
    stream.on('data', (event) => {
      if (done) return;
      events.push(event);
      if (stop(event)) {
        done = true;
        stream.cancel();
        resolve(events);
      }
    });
    stream.on('error', (err) => {
      if (!done) reject(err);
    });
    stream.on('end', () => {
      if (!done) reject(new Error(`stream ended after ${events.length} events`));
    });
  });
}

class Failed extends Error {}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const api = loadApi();
  const creds = grpc.credentials.createInsecure();
  const sessions = new api.AgentSessionService(args.addr, creds);
  const play = new api.RecordPlayService(args.addr, creds);

  // 1. Sign in (the password comes from the environment, never from argv).
  const session = await unary(sessions, 'SignIn', {
    agent_id: args.agent,
    phone_number: args.phone,
    password: process.env.CCGW_AGENT_PASSWORD || '',
  });
  console.error(`signed in: agent ${session.agent_id} session ${session.session_id}`);
  const before = (await unary(sessions, 'GetSession', { agent_id: args.agent })).last_sequence;

  // 2. Play and wait for the gateway's outcome event.
  const played = await unary(play, 'BeginPlay', {
    agent_id: args.agent,
    voice_path: args.voicePath,
    await_outcome: true,
  });
  if (played.outcome_sequence == null) throw new Failed('await_outcome returned no outcome_sequence');
  const outcome = played.outcome_sequence;
  console.error(`played: ${JSON.stringify(played.message)}, outcome event #${outcome}`);

  // 3. Watch from before the play, drop the stream after its first event, resume after it.
  const watch = (resumeAfter) =>
    play.WatchPlayEvents(
      { agent_id: args.agent, session_id: session.session_id, resume_after: resumeAfter },
      deadline(),
    );
  const [first] = await readUntil(watch(before), () => true);
  const lastSeen = first.sequence;
  await unary(play, 'StopPlay', { agent_id: args.agent });
  const rest = await readUntil(watch(lastSeen), (e) => e.type === 'PLAY_STOPPED');
  const events = [first, ...rest];
  for (let i = 1; i < events.length; i++) {
    // Session-wide sequences: a play-event watch skips other events, never repeats one.
    if (BigInt(events[i].sequence) <= BigInt(events[i - 1].sequence)) {
      throw new Failed(`out of order after resume: ${events[i - 1].sequence} then ${events[i].sequence}`);
    }
  }
  if (!events.some((e) => e.sequence === outcome)) {
    throw new Failed(`outcome #${outcome} not among the watched events`);
  }
  console.error(`watched (resumed after #${lastSeen}): ${events.map((e) => `${e.sequence} ${e.type}`).join(', ')}`);

  // 4. A refused call, decoded.
  let refused;
  try {
    await unary(play, 'StopPlay', { agent_id: '999998' });
    throw new Failed('StopPlay for an agent nobody signed in succeeded');
  } catch (err) {
    if (err instanceof Failed) throw err;
    const details = errorDetails(err);
    if (!details.reason) throw new Failed(`no ErrorInfo in ${err.code} ${err.details}`);
    refused = {
      code: grpc.status[err.code],
      reason: details.reason,
      domain: details.domain,
      metadata: details.metadata,
      may_retry: mayRetry(err),
    };
    console.error(`refused as expected: ${JSON.stringify(refused)}`);
  }

  // 5. Sign out.
  if (!args.keepSignedIn) await unary(sessions, 'SignOut', { agent_id: args.agent });
  sessions.close();
  play.close();
  console.log(
    JSON.stringify({
      summary: 'ccgw node example ok',
      agent_id: args.agent,
      session_id: session.session_id,
      outcome_sequence: Number(outcome),
      resumed_after: Number(lastSeen),
      events: events.map((e) => e.type),
      refused,
    }),
  );
}

main().catch((err) => {
  const detail = err.code !== undefined ? `${grpc.status[err.code]}: ${err.details}` : err.message;
  console.error(`client.js: FAILED: ${detail}`);
  process.exit(1);
});
