/**
 * Persistent reservations (SPC-4 §5.12, §6.15, §6.16) as a pure state machine: PR OUT takes a
 * state and returns the next one (the caller persists it before completing the command), PR IN
 * renders a state, and `prConflict` answers the SPC-4 §5.12.1 access table for one command class.
 */
import { Asc, PrIn, PrOut, PrType, SenseKey } from './constants';
import { SenseError, invalidCdb, invalidParam, paramListLengthError } from './sense';

/** A registration is bound to one I_T nexus: initiator port name + relative target port. */
export interface PrRegistration {
  /** I_T nexus key `${initiatorPortName}|${relativeTargetPortId}`. */
  readonly itn: string;
  readonly initiatorPortName: string;
  readonly rtpi: number;
  readonly key: bigint;
}

export interface PrReservation {
  /** The nexus that created it (for the all-registrants types every registrant holds it). */
  readonly holder: string;
  readonly type: number;
}

export interface PrState {
  readonly generation: number;
  /** Activate Persist Through Power Loss, from the last REGISTER (SPC-4 §5.12.5). */
  readonly aptpl: boolean;
  readonly registrations: readonly PrRegistration[];
  readonly reservation?: PrReservation;
}

export const EMPTY_PR_STATE: PrState = Object.freeze({ generation: 0, aptpl: false, registrations: Object.freeze([]) as readonly PrRegistration[] });

/** Who sends the PR OUT. */
export interface PrNexus {
  readonly itn: string;
  readonly initiatorPortName: string;
  readonly rtpi: number;
}

/** What a PR OUT did beyond the new state. */
export interface PrOutcome {
  readonly next: PrState;
  /** The state changed (persist before GOOD). */
  readonly changed: boolean;
  /** RESERVATION CONFLICT instead of GOOD. */
  readonly conflict: boolean;
  /** Unit attentions to establish: [itn, ASC/ASCQ]. */
  readonly uas: readonly (readonly [string, number])[];
  /** PREEMPT AND ABORT: nexuses whose tasks are aborted. */
  readonly aborted: readonly string[];
}

/** Access classes of commands for the conflict table (SPC-4 Table 63 / SBC-3 Table 14). */
export const enum Access {
  /** Allowed under every reservation (INQUIRY, REPORT LUNS, PR IN/OUT, TUR, READ CAPACITY...). */
  None = 0,
  /** Reads: conflict only under the exclusive-access types. */
  Read = 1,
  /** Writes and everything else that changes the medium or the LU: conflict under every type. */
  Write = 2,
}

export function isAllRegistrants(type: number): boolean {
  return type === PrType.WriteExclusiveAllRegistrants || type === PrType.ExclusiveAccessAllRegistrants;
}
function isRegistrantsOnly(type: number): boolean {
  return type === PrType.WriteExclusiveRegistrantsOnly || type === PrType.ExclusiveAccessRegistrantsOnly;
}
export function isValidType(type: number): boolean {
  return type === 1 || type === 3 || (type >= 5 && type <= 8);
}

function findReg(st: PrState, itn: string): PrRegistration | undefined {
  for (const r of st.registrations) if (r.itn === itn) return r;
  return undefined;
}

/** Whether `itn` holds the reservation (SPC-4 §5.12.10: every registrant for the AR types). */
export function isHolder(st: PrState, itn: string): boolean {
  const r = st.reservation;
  if (!r) return false;
  if (isAllRegistrants(r.type)) return findReg(st, itn) !== undefined;
  return r.holder === itn;
}

/** SPC-4 §5.12.1 Table 63: does a command of class `access` from `itn` conflict? */
export function prConflict(st: PrState, itn: string, access: Access): boolean {
  const r = st.reservation;
  if (r === undefined || access === Access.None) return false;
  switch (r.type) {
    case PrType.WriteExclusive:
      return access === Access.Write && r.holder !== itn;
    case PrType.ExclusiveAccess:
      return r.holder !== itn;
    case PrType.WriteExclusiveRegistrantsOnly:
    case PrType.WriteExclusiveAllRegistrants:
      return access === Access.Write && findReg(st, itn) === undefined;
    case PrType.ExclusiveAccessRegistrantsOnly:
    case PrType.ExclusiveAccessAllRegistrants:
      return findReg(st, itn) === undefined;
    default:
      return false;
  }
}

/** Whether the LU has any registration (RESERVE(6) conflicts then, SPC-4 §5.12.3 CRH=1). */
export function hasRegistrations(st: PrState): boolean {
  return st.registrations.length > 0;
}

/** Decoded PR OUT basic parameter list (SPC-4 §6.16.3, 24 bytes). */
export interface PrOutParams {
  readonly reservationKey: bigint;
  readonly serviceActionKey: bigint;
  readonly specIPt: boolean;
  readonly allTgPt: boolean;
  readonly aptpl: boolean;
}

/** Decode and validate the PR OUT CDB length and parameter list. */
export function decodePrOutParams(sa: number, paramListLength: number, data: Buffer | undefined): PrOutParams {
  if (sa === PrOut.RegisterAndMove) throw invalidCdb(1, 4);
  if (paramListLength !== 24) throw paramListLengthError();
  if (!data || data.length < 24) throw paramListLengthError();
  const flags = data[20];
  const p: PrOutParams = {
    reservationKey: data.readBigUInt64BE(0),
    serviceActionKey: data.readBigUInt64BE(8),
    specIPt: (flags & 0x08) !== 0,
    allTgPt: (flags & 0x04) !== 0,
    aptpl: (flags & 0x01) !== 0,
  };
  // SIP_C=0 in REPORT CAPABILITIES: SPEC_I_PT is not supported (SPC-4 §6.16.3).
  if (p.specIPt) throw invalidParam(20, 3);
  return p;
}

const CONFLICT_NO_CHANGE = (st: PrState): PrOutcome => ({ next: st, changed: false, conflict: true, uas: [], aborted: [] });
const NOOP = (st: PrState): PrOutcome => ({ next: st, changed: false, conflict: false, uas: [], aborted: [] });

/**
 * Remove the registrations of `victims` and apply SPC-4 §5.12.11.2 side effects on the
 * reservation (released when its holder goes, and for the AR types when the last registrant goes).
 */
function removeRegs(st: PrState, victims: ReadonlySet<string>, uas: [string, number][], releasedUaTo?: string): PrState {
  const registrations = st.registrations.filter((r) => !victims.has(r.itn));
  let reservation = st.reservation;
  if (reservation) {
    if (isAllRegistrants(reservation.type)) {
      if (registrations.length === 0) reservation = undefined;
    } else if (victims.has(reservation.holder)) {
      // SPC-4 §5.12.11.2.2: releasing a registrants-only reservation by unregistering
      // tells the other registrants.
      if (releasedUaTo !== undefined && isRegistrantsOnly(reservation.type)) {
        for (const r of registrations) if (r.itn !== releasedUaTo) uas.push([r.itn, Asc.ReservationsReleased]);
      }
      reservation = undefined;
    }
  }
  return { generation: st.generation, aptpl: st.aptpl, registrations, reservation };
}

/**
 * Run one PR OUT service action. Throws SenseError for invalid fields; returns `conflict`
 * for RESERVATION CONFLICT. Never mutates `st`.
 */
export function prOut(st: PrState, sa: number, scope: number, type: number, who: PrNexus, p: PrOutParams): PrOutcome {
  const reg = findReg(st, who.itn);
  const uas: [string, number][] = [];
  switch (sa) {
    case PrOut.Register:
    case PrOut.RegisterAndIgnoreExistingKey: {
      if (!reg) {
        if (sa === PrOut.Register && p.reservationKey !== 0n) return CONFLICT_NO_CHANGE(st);
        if (p.serviceActionKey === 0n) return NOOP(st);
        const added: PrRegistration = { itn: who.itn, initiatorPortName: who.initiatorPortName, rtpi: who.rtpi, key: p.serviceActionKey };
        return {
          next: { generation: st.generation + 1, aptpl: p.aptpl, registrations: [...st.registrations, added], reservation: st.reservation },
          changed: true,
          conflict: false,
          uas,
          aborted: [],
        };
      }
      if (sa === PrOut.Register && p.reservationKey !== reg.key) return CONFLICT_NO_CHANGE(st);
      if (p.serviceActionKey === 0n) {
        const removed = removeRegs(st, new Set([who.itn]), uas, who.itn);
        return { next: { ...removed, generation: st.generation + 1, aptpl: p.aptpl }, changed: true, conflict: false, uas, aborted: [] };
      }
      const registrations = st.registrations.map((r) => (r.itn === who.itn ? { ...r, key: p.serviceActionKey } : r));
      return { next: { generation: st.generation + 1, aptpl: p.aptpl, registrations, reservation: st.reservation }, changed: true, conflict: false, uas, aborted: [] };
    }
    case PrOut.Reserve: {
      if (!reg || reg.key !== p.reservationKey) return CONFLICT_NO_CHANGE(st);
      if (scope !== 0) throw invalidCdb(2, 4);
      if (!isValidType(type)) throw invalidCdb(2, 0);
      const r = st.reservation;
      if (r) {
        if (isHolder(st, who.itn) && r.type === type) return NOOP(st);
        return CONFLICT_NO_CHANGE(st);
      }
      return { next: { ...st, reservation: { holder: who.itn, type } }, changed: true, conflict: false, uas, aborted: [] };
    }
    case PrOut.Release: {
      if (!reg || reg.key !== p.reservationKey) return CONFLICT_NO_CHANGE(st);
      const r = st.reservation;
      if (!r || !isHolder(st, who.itn)) return NOOP(st);
      if (scope !== 0 || r.type !== type) throw new SenseError(SenseKey.IllegalRequest, Asc.InvalidReleaseOfPersistentReservation);
      if (r.type !== PrType.WriteExclusive && r.type !== PrType.ExclusiveAccess) {
        for (const o of st.registrations) if (o.itn !== who.itn) uas.push([o.itn, Asc.ReservationsReleased]);
      }
      return { next: { generation: st.generation, aptpl: st.aptpl, registrations: st.registrations }, changed: true, conflict: false, uas, aborted: [] };
    }
    case PrOut.Clear: {
      if (!reg || reg.key !== p.reservationKey) return CONFLICT_NO_CHANGE(st);
      for (const o of st.registrations) if (o.itn !== who.itn) uas.push([o.itn, Asc.ReservationsPreempted]);
      return { next: { generation: st.generation + 1, aptpl: st.aptpl, registrations: [] }, changed: true, conflict: false, uas, aborted: [] };
    }
    case PrOut.Preempt:
    case PrOut.PreemptAndAbort:
      return preempt(st, sa === PrOut.PreemptAndAbort, type, scope, who, p, reg);
    default:
      throw invalidCdb(1, 4);
  }
}

function preempt(st: PrState, abort: boolean, type: number, scope: number, who: PrNexus, p: PrOutParams, reg: PrRegistration | undefined): PrOutcome {
  if (!reg || reg.key !== p.reservationKey) return CONFLICT_NO_CHANGE(st);
  const uas: [string, number][] = [];
  const r = st.reservation;
  const victimsByKey = (key: bigint): Set<string> => {
    const s = new Set<string>();
    for (const o of st.registrations) if (o.key === key && o.itn !== who.itn) s.add(o.itn);
    return s;
  };
  const done = (next: PrState, victims: Set<string>): PrOutcome => {
    for (const v of victims) uas.push([v, Asc.RegistrationsPreempted]);
    return { next: { ...next, generation: st.generation + 1 }, changed: true, conflict: false, uas, aborted: abort ? [...victims] : [] };
  };
  // SPC-4 §5.12.11.4.3: no reservation, or an all-registrants one with a non-zero key:
  // only registrations go.
  if (!r || (isAllRegistrants(r.type) && p.serviceActionKey !== 0n)) {
    if (p.serviceActionKey === 0n) throw invalidParam(8);
    const victims = victimsByKey(p.serviceActionKey);
    if (victims.size === 0) return CONFLICT_NO_CHANGE(st);
    return done(removeRegs(st, victims, uas), victims);
  }
  if (isAllRegistrants(r.type)) {
    // SARK 0 under an all-registrants reservation: everyone else goes, the reservation is the issuer's.
    if (scope !== 0) throw invalidCdb(2, 4);
    if (!isValidType(type)) throw invalidCdb(2, 0);
    const victims = new Set(st.registrations.filter((o) => o.itn !== who.itn).map((o) => o.itn));
    const kept = st.registrations.filter((o) => o.itn === who.itn);
    return done({ generation: st.generation, aptpl: st.aptpl, registrations: kept, reservation: { holder: who.itn, type } }, victims);
  }
  const holderReg = findReg(st, r.holder);
  if (holderReg && holderReg.key === p.serviceActionKey) {
    // SPC-4 §5.12.11.4.4: preempting the holder moves the reservation to the issuer.
    if (scope !== 0) throw invalidCdb(2, 4);
    if (!isValidType(type)) throw invalidCdb(2, 0);
    const victims = victimsByKey(p.serviceActionKey);
    const registrations = st.registrations.filter((o) => !victims.has(o.itn));
    if (r.type !== type) {
      for (const o of registrations) if (o.itn !== who.itn) uas.push([o.itn, Asc.ReservationsReleased]);
    }
    return done({ generation: st.generation, aptpl: st.aptpl, registrations, reservation: { holder: who.itn, type } }, victims);
  }
  if (p.serviceActionKey === 0n) throw invalidParam(8);
  const victims = victimsByKey(p.serviceActionKey);
  if (victims.size === 0) return CONFLICT_NO_CHANGE(st);
  return done(removeRegs(st, victims, uas), victims);
}

/** iSCSI TransportID, format 01b (initiator port name), SPC-4 §7.6.4.6: length multiple of 4, >= 20. */
export function iscsiTransportId(initiatorPortName: string): Buffer {
  const name = Buffer.from(initiatorPortName, 'utf8');
  let nameLen = name.length + 1; // NUL-terminated
  nameLen = Math.max(16, (nameLen + 3) & ~3);
  const b = Buffer.alloc(4 + nameLen);
  b[0] = 0x40 | 0x05; // FORMAT CODE 01b, PROTOCOL IDENTIFIER iSCSI
  b.writeUInt16BE(nameLen, 2);
  name.copy(b, 4);
  return b;
}

/** Render PERSISTENT RESERVE IN data (SPC-4 §6.15). Throws INVALID FIELD IN CDB for unknown SAs. */
export function prIn(st: PrState, sa: number): Buffer {
  switch (sa) {
    case PrIn.ReadKeys: {
      const b = Buffer.alloc(8 + 8 * st.registrations.length);
      b.writeUInt32BE(st.generation >>> 0, 0);
      b.writeUInt32BE(8 * st.registrations.length, 4);
      st.registrations.forEach((r, i) => b.writeBigUInt64BE(r.key, 8 + 8 * i));
      return b;
    }
    case PrIn.ReadReservation: {
      const r = st.reservation;
      const b = Buffer.alloc(r ? 24 : 8);
      b.writeUInt32BE(st.generation >>> 0, 0);
      if (r) {
        b.writeUInt32BE(16, 4);
        // SPC-4 §6.15.3.3: the key is zero for the all-registrants types.
        const holder = findReg(st, r.holder);
        b.writeBigUInt64BE(isAllRegistrants(r.type) || !holder ? 0n : holder.key, 8);
        b[21] = r.type & 0x0f; // SCOPE 0 (LU_SCOPE) | TYPE
      }
      return b;
    }
    case PrIn.ReportCapabilities: {
      const b = Buffer.alloc(8);
      b.writeUInt16BE(8, 0);
      b[2] = 0x10 | 0x04 | 0x01; // CRH | ATP_C | PTPL_C (SIP_C=0)
      b[3] = 0x80 | (st.aptpl ? 0x01 : 0); // TMV | PTPL_A
      b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
      b[5] = 0x01; // EX_AC_AR
      return b;
    }
    case PrIn.ReadFullStatus: {
      const parts: Buffer[] = [];
      for (const reg of st.registrations) {
        const tid = iscsiTransportId(reg.initiatorPortName);
        const d = Buffer.alloc(24 + tid.length);
        d.writeBigUInt64BE(reg.key, 0);
        const holder = isHolder(st, reg.itn);
        d[12] = holder ? 0x01 : 0x00; // R_HOLDER (ALL_TG_PT=0)
        if (holder && st.reservation) d[13] = st.reservation.type & 0x0f;
        d.writeUInt16BE(reg.rtpi, 18);
        d.writeUInt32BE(tid.length, 20);
        tid.copy(d, 24);
        parts.push(d);
      }
      const body = Buffer.concat(parts);
      const b = Buffer.alloc(8 + body.length);
      b.writeUInt32BE(st.generation >>> 0, 0);
      b.writeUInt32BE(body.length, 4);
      body.copy(b, 8);
      return b;
    }
    default:
      throw invalidCdb(1, 4);
  }
}

/** JSON form for the store (bigint keys as hex). */
export interface PrStateJson {
  version: 1;
  generation: number;
  aptpl: boolean;
  registrations: { itn: string; initiatorPortName: string; rtpi: number; key: string }[];
  reservation?: { holder: string; type: number };
}

export function prToJson(st: PrState): PrStateJson {
  const j: PrStateJson = {
    version: 1,
    generation: st.generation,
    aptpl: st.aptpl,
    registrations: st.registrations.map((r) => ({ itn: r.itn, initiatorPortName: r.initiatorPortName, rtpi: r.rtpi, key: r.key.toString(16) })),
  };
  if (st.reservation) j.reservation = { holder: st.reservation.holder, type: st.reservation.type };
  return j;
}

export function prFromJson(j: PrStateJson): PrState {
  if (j.version !== 1 || !Array.isArray(j.registrations)) throw new Error('unsupported persistent reservation state');
  const registrations = j.registrations.map((r) => ({ itn: String(r.itn), initiatorPortName: String(r.initiatorPortName), rtpi: Number(r.rtpi), key: BigInt(`0x${r.key}`) }));
  const st: PrState = { generation: Number(j.generation) >>> 0, aptpl: !!j.aptpl, registrations };
  if (j.reservation && isValidType(j.reservation.type)) return { ...st, reservation: { holder: String(j.reservation.holder), type: j.reservation.type } };
  return st;
}
