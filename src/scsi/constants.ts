/**
 * SCSI protocol constants (SAM-5, SPC-4, SBC-3). The only place opcodes, status codes,
 * sense keys and additional sense codes are spelled out; every other file imports them.
 */

/** SAM-5 §5.3 status codes. */
export const Status = {
  Good: 0x00,
  CheckCondition: 0x02,
  ConditionMet: 0x04,
  Busy: 0x08,
  ReservationConflict: 0x18,
  TaskSetFull: 0x28,
  TaskAborted: 0x40,
} as const;

/** SPC-4 §4.5.6 sense keys. */
export const SenseKey = {
  NoSense: 0x0,
  RecoveredError: 0x1,
  NotReady: 0x2,
  MediumError: 0x3,
  HardwareError: 0x4,
  IllegalRequest: 0x5,
  UnitAttention: 0x6,
  DataProtect: 0x7,
  BlankCheck: 0x8,
  CopyAborted: 0xa,
  AbortedCommand: 0xb,
  VolumeOverflow: 0xd,
  Miscompare: 0xe,
} as const;

export const SENSE_KEY_NAMES: readonly string[] = [
  'NO_SENSE', 'RECOVERED_ERROR', 'NOT_READY', 'MEDIUM_ERROR', 'HARDWARE_ERROR', 'ILLEGAL_REQUEST',
  'UNIT_ATTENTION', 'DATA_PROTECT', 'BLANK_CHECK', 'VENDOR_SPECIFIC', 'COPY_ABORTED', 'ABORTED_COMMAND',
  'RESERVED_C', 'VOLUME_OVERFLOW', 'MISCOMPARE', 'COMPLETED',
];

/**
 * Additional sense code and qualifier, packed as (ASC << 8) | ASCQ (SPC-4 Table D.1 / §4.5.6).
 */
export const Asc = {
  NoAdditionalSense: 0x0000,
  LogicalUnitNotReadyManualIntervention: 0x0403,
  WriteError: 0x0c00,
  /** iSCSI: Data-Out not matching what was solicited (RFC 7143 §11.4.7.2). */
  IncorrectAmountOfData: 0x0c0d,
  ReadError: 0x1100,
  UnreachableCopyTarget: 0x0804,
  CopyTargetDeviceNotReachable: 0x0d02,
  MiscompareDuringVerify: 0x1d00,
  ParameterListLengthError: 0x1a00,
  InvalidCommandOperationCode: 0x2000,
  LbaOutOfRange: 0x2100,
  InvalidFieldInCdb: 0x2400,
  LogicalUnitNotSupported: 0x2500,
  InvalidFieldInParameterList: 0x2600,
  ParameterNotSupported: 0x2601,
  ParameterValueInvalid: 0x2602,
  InvalidReleaseOfPersistentReservation: 0x2604,
  TooManyTargetDescriptors: 0x2606,
  UnsupportedTargetDescriptorTypeCode: 0x2607,
  TooManySegmentDescriptors: 0x2608,
  UnsupportedSegmentDescriptorTypeCode: 0x2609,
  WriteProtected: 0x2700,
  PowerOnResetOrBusDeviceReset: 0x2900,
  PowerOnOccurred: 0x2901,
  BusDeviceResetFunctionOccurred: 0x2903,
  ItNexusLoss: 0x2907,
  ParametersChanged: 0x2a00,
  ModeParametersChanged: 0x2a01,
  ReservationsPreempted: 0x2a03,
  ReservationsReleased: 0x2a04,
  RegistrationsPreempted: 0x2a05,
  AsymmetricAccessStateChanged: 0x2a06,
  CapacityDataHasChanged: 0x2a09,
  CommandsClearedByAnotherInitiator: 0x2f00,
  SavingParametersNotSupported: 0x3900,
  InternalTargetFailure: 0x4400,
  InsufficientRegistrationResources: 0x5504,
  ReportedLunsDataChanged: 0x3f0e,
  InquiryDataHasChanged: 0x3f03,
} as const;

/** Operation codes (SPC-4 Annex E, SBC-3 §5). */
export const Op = {
  TestUnitReady: 0x00,
  RequestSense: 0x03,
  FormatUnit: 0x04,
  Read6: 0x08,
  Write6: 0x0a,
  Inquiry: 0x12,
  ModeSelect6: 0x15,
  Reserve6: 0x16,
  Release6: 0x17,
  ModeSense6: 0x1a,
  StartStopUnit: 0x1b,
  ReceiveDiagnosticResults: 0x1c,
  SendDiagnostic: 0x1d,
  PreventAllowMediumRemoval: 0x1e,
  ReadCapacity10: 0x25,
  Read10: 0x28,
  Write10: 0x2a,
  WriteAndVerify10: 0x2e,
  Verify10: 0x2f,
  PreFetch10: 0x34,
  SynchronizeCache10: 0x35,
  WriteBuffer: 0x3b,
  ReadBuffer: 0x3c,
  WriteSame10: 0x41,
  Unmap: 0x42,
  LogSelect: 0x4c,
  LogSense: 0x4d,
  ModeSelect10: 0x55,
  Reserve10: 0x56,
  Release10: 0x57,
  ModeSense10: 0x5a,
  PersistentReserveIn: 0x5e,
  PersistentReserveOut: 0x5f,
  Variable: 0x7f,
  ExtendedCopy: 0x83,
  ReceiveCopyResults: 0x84,
  Read16: 0x88,
  CompareAndWrite: 0x89,
  Write16: 0x8a,
  OrWrite: 0x8b,
  WriteAndVerify16: 0x8e,
  Verify16: 0x8f,
  PreFetch16: 0x90,
  SynchronizeCache16: 0x91,
  WriteSame16: 0x93,
  ServiceActionIn16: 0x9e,
  ServiceActionOut16: 0x9f,
  ReportLuns: 0xa0,
  MaintenanceIn: 0xa3,
  MaintenanceOut: 0xa4,
  Read12: 0xa8,
  Write12: 0xaa,
  WriteAndVerify12: 0xae,
  Verify12: 0xaf,
} as const;

/** SERVICE ACTION IN(16) service actions (SBC-3 §5). */
export const SaIn16 = { ReadCapacity16: 0x10, GetLbaStatus: 0x12 } as const;
/** MAINTENANCE IN service actions (SPC-4 §6). */
export const SaMaintIn = { ReportTargetPortGroups: 0x0a, ReportSupportedOpcodes: 0x0c, ReportSupportedTmfs: 0x0d } as const;
/** EXTENDED COPY service actions (SPC-4 §6.3): LID1. */
export const SaXcopy = { Lid1: 0x00 } as const;
/** RECEIVE COPY RESULTS service actions (SPC-4 §6.18). */
export const SaRcr = { CopyStatus: 0x00, ReceiveData: 0x01, OperatingParameters: 0x03, FailedSegmentDetails: 0x04 } as const;

/** PERSISTENT RESERVE IN service actions (SPC-4 §6.15). */
export const PrIn = { ReadKeys: 0x00, ReadReservation: 0x01, ReportCapabilities: 0x02, ReadFullStatus: 0x03 } as const;
/** PERSISTENT RESERVE OUT service actions (SPC-4 §6.16). */
export const PrOut = {
  Register: 0x00,
  Reserve: 0x01,
  Release: 0x02,
  Clear: 0x03,
  Preempt: 0x04,
  PreemptAndAbort: 0x05,
  RegisterAndIgnoreExistingKey: 0x06,
  RegisterAndMove: 0x07,
} as const;
/** Persistent reservation types (SPC-4 §6.16.3 Table 180). */
export const PrType = {
  WriteExclusive: 0x1,
  ExclusiveAccess: 0x3,
  WriteExclusiveRegistrantsOnly: 0x5,
  ExclusiveAccessRegistrantsOnly: 0x6,
  WriteExclusiveAllRegistrants: 0x7,
  ExclusiveAccessAllRegistrants: 0x8,
} as const;

/** INQUIRY VPD page codes (SPC-4 §7.8, SBC-3 §6.6). */
export const Vpd = {
  SupportedPages: 0x00,
  UnitSerialNumber: 0x80,
  DeviceIdentification: 0x83,
  ExtendedInquiry: 0x86,
  ThirdPartyCopy: 0x8f,
  BlockLimits: 0xb0,
  BlockDeviceCharacteristics: 0xb1,
  LogicalBlockProvisioning: 0xb2,
} as const;

/** Mode page codes (SPC-4 §7.5, SBC-3 §6.5). */
export const ModePage = {
  ReadWriteErrorRecovery: 0x01,
  Caching: 0x08,
  Control: 0x0a,
  InformationalExceptions: 0x1c,
  AllPages: 0x3f,
} as const;

/** Mode sense page control (SPC-4 §6.11 Table 134). */
export const PageControl = { Current: 0, Changeable: 1, Default: 2, Saved: 3 } as const;

/** Version descriptors (SPC-4 Table 147). */
export const VersionDescriptor = {
  Sam5: 0x00a0,
  Spc4: 0x0460,
  Sbc3: 0x04c0,
  Iscsi: 0x0960,
} as const;

/** Peripheral device type: direct access block device. */
export const PDT_DIRECT_ACCESS = 0x00;
/** INQUIRY on a LUN that does not exist: qualifier 3, type 0x1f (SPC-4 §6.6.2). */
export const PQ_NOT_CONNECTED_BYTE0 = 0x7f;
/** VERSION field: SPC-4. */
export const VERSION_SPC4 = 0x06;

/** iSCSI protocol identifier (SPC-4 Table 362). */
export const PROTOCOL_ID_ISCSI = 0x5;

/** Designator types and associations (SPC-4 §7.8.6.1). */
export const Designator = {
  TypeVendor: 0x0,
  TypeT10: 0x1,
  TypeEui64: 0x2,
  TypeNaa: 0x3,
  TypeRelativeTargetPort: 0x4,
  TypeTargetPortGroup: 0x5,
  TypeScsiName: 0x8,
  AssocLu: 0x0,
  AssocTargetPort: 0x1,
  AssocTargetDevice: 0x2,
  CodeSetBinary: 0x1,
  CodeSetAscii: 0x2,
  CodeSetUtf8: 0x3,
} as const;

/** EXTENDED COPY descriptor type codes (SPC-4 §6.3.6, §6.3.7). */
export const XcopyDescr = {
  BlockToBlockSegment: 0x02,
  IdentificationTarget: 0xe4,
} as const;
