/**
 * Operational parameter negotiation (RFC 7143 §6 and §13): one pure function per key kind
 * (list, numeric min/max, boolean and/or, declarative), a table of every key the target knows,
 * and the resulting session parameters. The login state machine feeds it the initiator's
 * operational keys and sends back what it answers.
 */
import { TARGET_LIMITS } from './constants';
import type { TextPairs } from './text';

export interface SessionParams {
  headerDigest: boolean;
  dataDigest: boolean;
  /** The initiator's MaxRecvDataSegmentLength: the largest data segment we may send. */
  initiatorMaxRecvDataSegmentLength: number;
  /** Ours, as declared. */
  targetMaxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  immediateData: boolean;
  initialR2T: boolean;
  maxOutstandingR2T: number;
  dataPduInOrder: boolean;
  dataSequenceInOrder: boolean;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  errorRecoveryLevel: number;
  maxConnections: number;
}

/** RFC 7143 defaults: what applies to a key nobody negotiated. */
export function rfcDefaults(): SessionParams {
  return {
    headerDigest: false,
    dataDigest: false,
    initiatorMaxRecvDataSegmentLength: 8192,
    targetMaxRecvDataSegmentLength: TARGET_LIMITS.maxRecvDataSegmentLength,
    maxBurstLength: 262144,
    firstBurstLength: 65536,
    immediateData: true,
    initialR2T: true,
    maxOutstandingR2T: 1,
    dataPduInOrder: true,
    dataSequenceInOrder: true,
    defaultTime2Wait: 2,
    defaultTime2Retain: 20,
    errorRecoveryLevel: 0,
    maxConnections: 1,
  };
}

/** What the target is willing to accept; the appliance may tighten it (e.g. require digests). */
export interface TargetOffer {
  digests: readonly ('CRC32C' | 'None')[];
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  immediateData: boolean;
  initialR2T: boolean;
  maxOutstandingR2T: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
}

export function defaultOffer(): TargetOffer {
  return {
    digests: ['CRC32C', 'None'],
    maxRecvDataSegmentLength: TARGET_LIMITS.maxRecvDataSegmentLength,
    maxBurstLength: TARGET_LIMITS.maxBurstLength,
    firstBurstLength: TARGET_LIMITS.firstBurstLength,
    immediateData: true,
    initialR2T: false,
    maxOutstandingR2T: TARGET_LIMITS.maxOutstandingR2T,
    defaultTime2Wait: TARGET_LIMITS.defaultTime2Wait,
    defaultTime2Retain: TARGET_LIMITS.defaultTime2Retain,
  };
}

export const REJECT = 'Reject';
export const NOT_UNDERSTOOD = 'NotUnderstood';
export const IRRELEVANT = 'Irrelevant';

/** Parse a numeric value (decimal, or 0x hex); undefined when malformed. */
export function parseNumber(v: string): number | undefined {
  if (/^[0-9]{1,10}$/.test(v)) return Number(v);
  if (/^0[xX][0-9a-fA-F]{1,8}$/.test(v)) return parseInt(v.slice(2), 16);
  return undefined;
}

function parseBool(v: string): boolean | undefined {
  return v === 'Yes' ? true : v === 'No' ? false : undefined;
}
const yesNo = (b: boolean): string => (b ? 'Yes' : 'No');

type KeyRule =
  | { kind: 'digest'; apply(p: SessionParams, on: boolean): void }
  | { kind: 'min' | 'max'; lo: number; hi: number; ours(o: TargetOffer): number; apply(p: SessionParams, n: number): void }
  | { kind: 'and' | 'or'; ours(o: TargetOffer): boolean; apply(p: SessionParams, b: boolean): void }
  | { kind: 'declare'; lo: number; hi: number; apply(p: SessionParams, n: number): void }
  | { kind: 'fixed'; answer(offer: string): string };

const MAX_LEN = 0xffffff;

/** Every operational key the target understands. */
export const KEYS: Readonly<Record<string, KeyRule>> = {
  HeaderDigest: { kind: 'digest', apply: (p, on) => { p.headerDigest = on; } },
  DataDigest: { kind: 'digest', apply: (p, on) => { p.dataDigest = on; } },
  MaxRecvDataSegmentLength: { kind: 'declare', lo: 512, hi: MAX_LEN, apply: (p, n) => { p.initiatorMaxRecvDataSegmentLength = n; } },
  MaxBurstLength: { kind: 'min', lo: 512, hi: MAX_LEN, ours: (o) => o.maxBurstLength, apply: (p, n) => { p.maxBurstLength = n; } },
  FirstBurstLength: { kind: 'min', lo: 512, hi: MAX_LEN, ours: (o) => o.firstBurstLength, apply: (p, n) => { p.firstBurstLength = n; } },
  MaxOutstandingR2T: { kind: 'min', lo: 1, hi: 65535, ours: (o) => o.maxOutstandingR2T, apply: (p, n) => { p.maxOutstandingR2T = n; } },
  DefaultTime2Wait: { kind: 'max', lo: 0, hi: 3600, ours: (o) => o.defaultTime2Wait, apply: (p, n) => { p.defaultTime2Wait = n; } },
  DefaultTime2Retain: { kind: 'min', lo: 0, hi: 3600, ours: (o) => o.defaultTime2Retain, apply: (p, n) => { p.defaultTime2Retain = n; } },
  ErrorRecoveryLevel: { kind: 'min', lo: 0, hi: 2, ours: () => 0, apply: (p, n) => { p.errorRecoveryLevel = n; } },
  MaxConnections: { kind: 'min', lo: 1, hi: 65535, ours: () => 1, apply: (p, n) => { p.maxConnections = n; } },
  ImmediateData: { kind: 'and', ours: (o) => o.immediateData, apply: (p, b) => { p.immediateData = b; } },
  InitialR2T: { kind: 'or', ours: (o) => o.initialR2T, apply: (p, b) => { p.initialR2T = b; } },
  DataPDUInOrder: { kind: 'or', ours: () => true, apply: (p, b) => { p.dataPduInOrder = b; } },
  DataSequenceInOrder: { kind: 'or', ours: () => true, apply: (p, b) => { p.dataSequenceInOrder = b; } },
  // Markers are obsolete (RFC 7143 §13.21): always off; their intervals are then irrelevant.
  IFMarker: { kind: 'and', ours: () => false, apply: () => undefined },
  OFMarker: { kind: 'and', ours: () => false, apply: () => undefined },
  IFMarkInt: { kind: 'fixed', answer: () => IRRELEVANT },
  OFMarkInt: { kind: 'fixed', answer: () => IRRELEVANT },
  // RFC 7144 keys.
  TaskReporting: { kind: 'fixed', answer: (v) => (v.split(',').includes('RFC3720') ? 'RFC3720' : REJECT) },
  iSCSIProtocolLevel: { kind: 'fixed', answer: (v) => { const n = parseNumber(v); return n === undefined || n > 31 ? REJECT : String(Math.min(n, 1)); } },
};

export interface NegotiationOutcome {
  /** Keys to answer, in the order received. */
  answers: TextPairs;
}

/**
 * Answer the initiator's operational keys and update `params` accordingly. Keys the target
 * does not know get NotUnderstood; malformed or out-of-range values get Reject and leave the
 * parameter at its current value.
 */
export function negotiate(pairs: TextPairs, offer: TargetOffer, params: SessionParams): NegotiationOutcome {
  const answers: TextPairs = [];
  for (const [key, value] of pairs) {
    const rule = KEYS[key];
    if (!rule) {
      answers.push([key, NOT_UNDERSTOOD]);
      continue;
    }
    answers.push([key, answerKey(rule, value, offer, params)]);
  }
  if (params.firstBurstLength > params.maxBurstLength) {
    // RFC 7143 §13.14: FirstBurstLength MUST NOT exceed MaxBurstLength. The answer (Minimum:
    // any value up to the offer) must say what the target enforces.
    params.firstBurstLength = params.maxBurstLength;
    const i = answers.findIndex(([k, v]) => k === 'FirstBurstLength' && v !== REJECT);
    if (i >= 0) answers[i] = ['FirstBurstLength', String(params.firstBurstLength)];
  }
  return { answers };
}

function answerKey(rule: KeyRule, value: string, offer: TargetOffer, params: SessionParams): string {
  switch (rule.kind) {
    case 'digest': {
      const choices = value.split(',');
      const pick = choices.find((c) => (offer.digests as readonly string[]).includes(c));
      if (!pick) return REJECT;
      rule.apply(params, pick === 'CRC32C');
      return pick;
    }
    case 'min':
    case 'max': {
      const n = parseNumber(value);
      if (n === undefined || n < rule.lo || n > rule.hi) return REJECT;
      const result = rule.kind === 'min' ? Math.min(n, rule.ours(offer)) : Math.max(n, rule.ours(offer));
      rule.apply(params, result);
      return String(result);
    }
    case 'and':
    case 'or': {
      const b = parseBool(value);
      if (b === undefined) return REJECT;
      const result = rule.kind === 'and' ? b && rule.ours(offer) : b || rule.ours(offer);
      rule.apply(params, result);
      return yesNo(result);
    }
    case 'declare': {
      const n = parseNumber(value);
      if (n === undefined || n < rule.lo || n > rule.hi) return REJECT;
      rule.apply(params, n);
      return String(offer.maxRecvDataSegmentLength);
    }
    case 'fixed':
      return rule.answer(value);
  }
}

/**
 * Keys the target states on its own before leaving the operational stage, for those the
 * initiator did not raise: our MaxRecvDataSegmentLength (always declared), and our offers
 * that differ from the RFC defaults so both sides agree on the result.
 */
export function targetDeclarations(raised: ReadonlySet<string>, offer: TargetOffer, params: SessionParams, discovery: boolean): TextPairs {
  const out: TextPairs = [];
  if (!raised.has('MaxRecvDataSegmentLength')) out.push(['MaxRecvDataSegmentLength', String(offer.maxRecvDataSegmentLength)]);
  params.targetMaxRecvDataSegmentLength = offer.maxRecvDataSegmentLength;
  if (discovery) return out;
  return out;
}
