import { OffsiteError } from '../common/errors';

/** A replication frame or conversation that cannot be accepted; the connection is dropped and resumed. */
export class ReplicationError extends OffsiteError {}

export const ReplicationErrorCode = {
  FrameMagic: 'REPL_FRAME_MAGIC',
  FrameVersion: 'REPL_FRAME_VERSION',
  FrameTooLarge: 'REPL_FRAME_TOO_LARGE',
  FrameCrc: 'REPL_FRAME_CRC',
  FrameType: 'REPL_FRAME_TYPE',
  FrameMeta: 'REPL_FRAME_META',
  FramePayload: 'REPL_FRAME_PAYLOAD',
  Sequence: 'REPL_SEQUENCE',
  Handshake: 'REPL_HANDSHAKE',
  /** The replica holds records past this primary's head in the same history: it stays refused. */
  ReplicaAhead: 'REPL_REPLICA_AHEAD',
} as const;
