/**
 * iSCSI protocol constants (RFC 7143), in one place. Opcodes, flags, status classes, reject
 * reasons and the target's own negotiation limits.
 */

export const BHS_LENGTH = 48;
export const RESERVED_TAG = 0xffffffff;

/** Initiator opcodes (RFC 7143 §11.1.1). */
export const enum InitiatorOp {
  NopOut = 0x00,
  ScsiCommand = 0x01,
  TaskManagement = 0x02,
  LoginRequest = 0x03,
  TextRequest = 0x04,
  DataOut = 0x05,
  LogoutRequest = 0x06,
  SnackRequest = 0x10,
}

/** Target opcodes. */
export const enum TargetOp {
  NopIn = 0x20,
  ScsiResponse = 0x21,
  TaskManagementResponse = 0x22,
  LoginResponse = 0x23,
  TextResponse = 0x24,
  DataIn = 0x25,
  LogoutResponse = 0x26,
  ReadyToTransfer = 0x31,
  AsyncMessage = 0x32,
  Reject = 0x3f,
}

export const OPCODE_MASK = 0x3f;
export const IMMEDIATE_BIT = 0x40;
export const FINAL_BIT = 0x80;
export const CONTINUE_BIT = 0x40;
export const TRANSIT_BIT = 0x80;

/** SCSI Command flags (byte 1). */
export const CMD_READ = 0x40;
export const CMD_WRITE = 0x20;
export const CMD_ATTR_MASK = 0x07;

/** SCSI Response / Data-In flags. */
export const RESP_BIDI_OVERFLOW = 0x10;
export const RESP_BIDI_UNDERFLOW = 0x08;
export const RESP_OVERFLOW = 0x04;
export const RESP_UNDERFLOW = 0x02;
export const DATAIN_ACK = 0x40;
export const DATAIN_STATUS = 0x01;

/** SCSI Response "Response" field. */
export const enum ScsiResponseCode {
  CommandCompleted = 0x00,
  TargetFailure = 0x01,
}

/** Login stages (CSG / NSG). */
export const enum Stage {
  Security = 0,
  Operational = 1,
  FullFeature = 3,
}

/** Login status: class << 8 | detail (RFC 7143 §11.13.5). */
export const enum LoginStatus {
  Success = 0x0000,
  TargetMovedTemporarily = 0x0101,
  InitiatorError = 0x0200,
  AuthenticationFailure = 0x0201,
  AuthorizationFailure = 0x0202,
  NotFound = 0x0203,
  TargetRemoved = 0x0204,
  UnsupportedVersion = 0x0205,
  TooManyConnections = 0x0206,
  MissingParameter = 0x0207,
  CantIncludeInSession = 0x0208,
  SessionTypeNotSupported = 0x0209,
  SessionDoesNotExist = 0x020a,
  InvalidDuringLogin = 0x020b,
  TargetError = 0x0300,
  ServiceUnavailable = 0x0301,
  OutOfResources = 0x0302,
}

/** Reject reasons (RFC 7143 §11.17.1). */
export const enum RejectReason {
  DataDigestError = 0x02,
  SnackReject = 0x03,
  ProtocolError = 0x04,
  CommandNotSupported = 0x05,
  ImmediateCommandReject = 0x06,
  TaskInProgress = 0x07,
  InvalidDataAck = 0x08,
  InvalidPduField = 0x09,
  LongOperationReject = 0x0a,
  WaitingForLogout = 0x0c,
}

export const enum LogoutReason {
  CloseSession = 0,
  CloseConnection = 1,
  RemoveConnectionForRecovery = 2,
}

export const enum LogoutResponseCode {
  Success = 0,
  CidNotFound = 1,
  RecoveryNotSupported = 2,
  CleanupFailed = 3,
}

export const enum AsyncEvent {
  ScsiEvent = 0,
  LogoutRequest = 1,
  DropConnection = 2,
  DropAllConnections = 3,
  NegotiationRequest = 4,
}

/** Version of the protocol (RFC 7143: Version-max = Version-min = 0). */
export const ISCSI_VERSION = 0x00;

/** The target's limits: what we declare and the bounds we enforce before allocating. */
export const TARGET_LIMITS = {
  /** Our MaxRecvDataSegmentLength: the largest data segment we accept in full feature phase. */
  maxRecvDataSegmentLength: 262144,
  /** Data segment limit during login (RFC 7143 default MaxRecvDataSegmentLength). */
  loginMaxDataSegment: 8192,
  /** Total text accepted across C-bit continuations of one login or text request. */
  maxTextBytes: 65536,
  /** MaxBurstLength we offer (the largest legal value is 2^24 - 1). */
  maxBurstLength: 16776192,
  firstBurstLength: 262144,
  maxOutstandingR2T: 1,
  defaultTime2Wait: 2,
  defaultTime2Retain: 0,
  /** Commands the CmdSN window admits per session (MaxCmdSN - ExpCmdSN + 1 when idle). */
  queueDepth: 128,
  /** Largest ExpectedDataTransferLength for data-out we buffer per command. */
  maxDataOutBytes: 64 * 1024 * 1024,
  /** Data-out bytes buffered per connection before we drop it (memory bound). */
  maxBufferedDataOutBytes: 512 * 1024 * 1024,
} as const;

/** Largest value of a 24-bit length field. */
export const MAX_24 = 0xffffff;
