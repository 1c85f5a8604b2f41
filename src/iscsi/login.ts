/**
 * The login phase of one connection (RFC 7143 §6.3, §11.12–11.13): identity keys, the security
 * stage (AuthMethod None or CHAP, one-way or mutual), the operational stage, stage transitions
 * and text continuation. Pure state machine: it consumes Login Request fields and text, and
 * returns the Login Response to send; the server owns sockets and sessions.
 */
import { LoginStatus, Stage, TARGET_LIMITS } from './constants';
import { CHAP_MD5, chapResponse, chapVerify, decodeBinary, encodeBinary, newChallenge } from './chap';
import { IscsiError, LoginFailure } from './errors';
import { REJECT, negotiate, rfcDefaults, targetDeclarations, type SessionParams, type TargetOffer } from './negotiation';
import { encodeText, parseText, type TextPairs } from './text';
import type { TargetDirectory, TargetEntry } from './targets';

export type SessionType = 'Normal' | 'Discovery';

export interface LoginRequestFields {
  transit: boolean;
  cont: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  isid: Buffer;
  tsih: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export function loginRequestFields(bhs: Buffer): LoginRequestFields {
  return {
    transit: (bhs[1] & 0x80) !== 0,
    cont: (bhs[1] & 0x40) !== 0,
    csg: (bhs[1] >> 2) & 3,
    nsg: bhs[1] & 3,
    versionMax: bhs[2],
    versionMin: bhs[3],
    isid: Buffer.from(bhs.subarray(8, 14)),
    tsih: bhs.readUInt16BE(14),
    itt: bhs.readUInt32BE(16),
    cid: bhs.readUInt16BE(20),
    cmdSN: bhs.readUInt32BE(24),
    expStatSN: bhs.readUInt32BE(28),
  };
}

export interface LoginReply {
  status: LoginStatus;
  transit: boolean;
  csg: number;
  nsg: number;
  pairs: TextPairs;
  /** The login moved to full feature phase with this response. */
  complete: boolean;
  /** Human reason for a failure (logged, never sent). */
  reason?: string;
  /**
   * The data segment to send, when the answers did not fit in one Login Response: one piece of
   * the encoded text per response, `cont` set on all but the last (RFC 7143 §11.13.3).
   */
  text?: Buffer;
  /** C bit: more of this response's text follows (the initiator asks for it with an empty Login Request). */
  cont?: boolean;
}

export interface LoginEnvironment {
  directory: TargetDirectory;
  offer: TargetOffer;
  portalGroupTag: number;
}

type AuthState = 'none-chosen' | 'chap-chosen' | 'chap-challenged' | 'done' | 'pending';

const SECURITY_KEYS = new Set(['AuthMethod', 'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R']);
const IDENTITY_KEYS = new Set(['InitiatorName', 'InitiatorAlias', 'TargetName', 'SessionType']);
/** Keys only the target may send: an initiator sending them gets Reject (RFC 7143 §13). */
const TARGET_ONLY_KEYS = new Set(['TargetAlias', 'TargetAddress', 'TargetPortalGroupTag']);

export class LoginMachine {
  stage: Stage = Stage.Security;
  first?: LoginRequestFields;
  initiatorName?: string;
  initiatorAlias?: string;
  sessionType: SessionType = 'Normal';
  target?: TargetEntry;
  readonly params: SessionParams = rfcDefaults();
  /** Whether CHAP was completed (for logs). */
  authenticated = false;
  private auth: AuthState = 'pending';
  private chapId = 0;
  private chapChallenge?: Buffer;
  private raised = new Set<string>();
  private sentPortalGroupTag = false;
  private declared = false;
  private admitted = false;
  private pendingText: Buffer[] = [];
  private pendingTextBytes = 0;
  /** A Login Response too long for one PDU, being sent piece by piece. */
  private outgoing?: { reply: LoginReply; text: Buffer; offset: number };

  constructor(private readonly env: LoginEnvironment) {}

  /** Handle one Login Request. Throws nothing: failures come back as a LoginReply with a status. */
  step(req: LoginRequestFields, data: Buffer): LoginReply {
    try {
      if (this.outgoing) return this.continueReply(req, data);
      const reply = this.stepUnsafe(req, data);
      if (reply.status !== LoginStatus.Success) return reply;
      const text = encodeText(reply.pairs);
      if (text.length <= TARGET_LIMITS.loginMaxDataSegment) return reply;
      this.outgoing = { reply, text, offset: 0 };
      return this.nextPiece();
    } catch (e) {
      if (e instanceof LoginFailure) return this.fail(e.status, e.message);
      if (e instanceof IscsiError) return this.fail(LoginStatus.InitiatorError, e.message);
      return this.fail(LoginStatus.TargetError, (e as Error).message);
    }
  }

  /** The initiator asks for the rest of a continued response: an empty Login Request without C, same stage. */
  private continueReply(req: LoginRequestFields, data: Buffer): LoginReply {
    const { reply } = this.outgoing!;
    if (!req.isid.equals(this.first!.isid) || req.tsih !== this.first!.tsih || req.cid !== this.first!.cid) {
      throw new LoginFailure(LoginStatus.InitiatorError, 'ISID, TSIH or CID changed during login');
    }
    if (req.cont || data.length || req.csg !== reply.csg) {
      throw new LoginFailure(LoginStatus.InitiatorError, 'expected an empty Login Request (C=0, same stage) to continue the Login Response');
    }
    return this.nextPiece();
  }

  private nextPiece(): LoginReply {
    const out = this.outgoing!;
    const end = Math.min(out.text.length, out.offset + TARGET_LIMITS.loginMaxDataSegment);
    const text = out.text.subarray(out.offset, end);
    out.offset = end;
    if (end < out.text.length) return { status: LoginStatus.Success, transit: false, csg: out.reply.csg, nsg: 0, pairs: [], complete: false, text, cont: true };
    this.outgoing = undefined;
    return { ...out.reply, text, cont: false };
  }

  private fail(status: LoginStatus, reason: string): LoginReply {
    return { status, transit: false, csg: this.stage, nsg: 0, pairs: [], complete: false, reason };
  }

  private stepUnsafe(req: LoginRequestFields, data: Buffer): LoginReply {
    if (!this.first) {
      if (req.versionMin > 0) throw new LoginFailure(LoginStatus.UnsupportedVersion, `unsupported iSCSI version ${req.versionMin}`);
      this.first = req;
      if (req.csg === Stage.Operational) this.stage = Stage.Operational;
    } else if (!req.isid.equals(this.first.isid) || req.tsih !== this.first.tsih || req.cid !== this.first.cid) {
      throw new LoginFailure(LoginStatus.InitiatorError, 'ISID, TSIH or CID changed during login');
    }
    if (req.csg !== this.stage) throw new LoginFailure(LoginStatus.InitiatorError, `login request in stage ${req.csg}, expected ${this.stage}`);
    if (req.csg === Stage.FullFeature || (req.transit && (req.nsg === 2 || req.nsg <= req.csg))) {
      throw new LoginFailure(LoginStatus.InitiatorError, `invalid stage transition ${req.csg} -> ${req.nsg}`);
    }
    if (req.cont) {
      if (req.transit) throw new LoginFailure(LoginStatus.InitiatorError, 'C and T bits both set');
      this.bufferText(data);
      return { status: LoginStatus.Success, transit: false, csg: this.stage, nsg: 0, pairs: [], complete: false };
    }
    this.bufferText(data);
    const text = this.pendingText.length === 1 ? this.pendingText[0] : Buffer.concat(this.pendingText);
    this.pendingText = [];
    this.pendingTextBytes = 0;
    const pairs = parseText(text);

    const answers: TextPairs = [];
    const operational: TextPairs = [];
    const security: TextPairs = [];
    for (const [k, v] of pairs) {
      if (IDENTITY_KEYS.has(k)) this.identity(k, v);
      else if (SECURITY_KEYS.has(k)) security.push([k, v]);
      else if (TARGET_ONLY_KEYS.has(k)) answers.push([k, REJECT]);
      else operational.push([k, v]);
    }
    if (!this.admitted) {
      this.admit();
      this.admitted = true;
    }

    if (!this.sentPortalGroupTag && this.sessionType === 'Normal') {
      answers.push(['TargetPortalGroupTag', String(this.env.portalGroupTag)]);
      if (this.target?.alias) answers.push(['TargetAlias', this.target.alias]);
      this.sentPortalGroupTag = true;
    }

    if (this.stage === Stage.Security) {
      answers.push(...this.security(security));
    } else if (security.length) {
      throw new LoginFailure(LoginStatus.InitiatorError, `security key ${security[0][0]} in the operational stage`);
    } else if (this.requiresChap() && this.auth !== 'done') {
      throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP is required for this target but the initiator skipped the security stage');
    }

    for (const [k] of operational) this.raised.add(k);
    answers.push(...negotiate(operational, this.env.offer, this.params).answers);

    let transit = false;
    let complete = false;
    if (req.transit) {
      const authOk = this.stage !== Stage.Security || this.auth === 'none-chosen' || this.auth === 'done';
      if (authOk) {
        transit = true;
        if (req.nsg === Stage.FullFeature) {
          if (!this.declared) {
            answers.push(...targetDeclarations(this.raised, this.env.offer, this.params, this.sessionType === 'Discovery'));
            this.declared = true;
          }
          complete = true;
        }
      }
    }
    const reply: LoginReply = { status: LoginStatus.Success, transit, csg: this.stage, nsg: transit ? req.nsg : 0, pairs: answers, complete };
    if (transit) this.stage = req.nsg as Stage;
    return reply;
  }

  private bufferText(data: Buffer): void {
    this.pendingTextBytes += data.length;
    if (this.pendingTextBytes > TARGET_LIMITS.maxTextBytes) throw new LoginFailure(LoginStatus.OutOfResources, `login text exceeds ${TARGET_LIMITS.maxTextBytes} bytes`);
    if (data.length) this.pendingText.push(Buffer.from(data));
  }

  private identity(k: string, v: string): void {
    switch (k) {
      case 'InitiatorName':
        if (this.initiatorName !== undefined && this.initiatorName !== v) throw new LoginFailure(LoginStatus.InitiatorError, 'InitiatorName changed during login');
        if (!v || v.length > 223) throw new LoginFailure(LoginStatus.InitiatorError, 'invalid InitiatorName');
        this.initiatorName = v;
        return;
      case 'InitiatorAlias':
        this.initiatorAlias = v;
        return;
      case 'SessionType':
        if (v !== 'Normal' && v !== 'Discovery') throw new LoginFailure(LoginStatus.SessionTypeNotSupported, `SessionType ${v} is not supported`);
        if (this.admitted && v !== this.sessionType) throw new LoginFailure(LoginStatus.InitiatorError, 'SessionType changed during login');
        this.sessionType = v;
        return;
      case 'TargetName': {
        const t = this.env.directory.lookup(v);
        if (!t) throw new LoginFailure(LoginStatus.NotFound, `target ${v} not found`);
        if (this.target && this.target !== t) throw new LoginFailure(LoginStatus.InitiatorError, 'TargetName changed during login');
        this.target = t;
        return;
      }
    }
  }

  /** Checks on the first request once its identity keys are known. */
  private admit(): void {
    if (!this.initiatorName) throw new LoginFailure(LoginStatus.MissingParameter, 'InitiatorName missing');
    if (this.sessionType === 'Normal') {
      if (!this.target) throw new LoginFailure(LoginStatus.MissingParameter, 'TargetName missing in a normal session');
      const allowed = this.target.auth.allowedInitiators;
      if (allowed && allowed.length && !allowed.includes(this.initiatorName)) {
        throw new LoginFailure(LoginStatus.AuthorizationFailure, `initiator ${this.initiatorName} is not allowed on ${this.target.name}`);
      }
    } else if (this.target) {
      throw new LoginFailure(LoginStatus.InitiatorError, 'TargetName given in a discovery session');
    }
  }

  private requiresChap(): boolean {
    return this.sessionType === 'Normal' && !!this.target?.auth.chap;
  }

  private security(keys: TextPairs): TextPairs {
    const out: TextPairs = [];
    const get = (k: string) => keys.find(([n]) => n === k)?.[1];
    const authMethod = get('AuthMethod');
    if (authMethod !== undefined) {
      if (this.auth !== 'pending') throw new LoginFailure(LoginStatus.InitiatorError, 'AuthMethod offered twice');
      const offered = authMethod.split(',');
      if (this.requiresChap()) {
        if (!offered.includes('CHAP')) {
          throw new LoginFailure(LoginStatus.AuthenticationFailure, `CHAP required but initiator offered ${authMethod}`);
        }
        out.push(['AuthMethod', 'CHAP']);
        this.auth = 'chap-chosen';
      } else if (offered.includes('None')) {
        out.push(['AuthMethod', 'None']);
        this.auth = 'none-chosen';
      } else {
        throw new LoginFailure(LoginStatus.AuthenticationFailure, `no CHAP configured and initiator offered only ${authMethod}`);
      }
    } else if (this.auth === 'pending') {
      // The initiator did not offer AuthMethod: allowed only when no authentication is required.
      if (this.requiresChap()) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'CHAP required but AuthMethod not offered');
      this.auth = 'none-chosen';
    }
    const chapA = get('CHAP_A');
    if (chapA !== undefined) {
      if (this.auth !== 'chap-chosen') throw new LoginFailure(LoginStatus.InitiatorError, 'CHAP_A without AuthMethod=CHAP');
      if (!chapA.split(',').includes(String(CHAP_MD5))) throw new LoginFailure(LoginStatus.AuthenticationFailure, `unsupported CHAP algorithm ${chapA}`);
      const c = newChallenge();
      this.chapId = c.id;
      this.chapChallenge = c.challenge;
      out.push(['CHAP_A', String(CHAP_MD5)], ['CHAP_I', String(c.id)], ['CHAP_C', encodeBinary(c.challenge)]);
      this.auth = 'chap-challenged';
      return out;
    }
    const chapN = get('CHAP_N');
    const chapR = get('CHAP_R');
    if (chapN !== undefined || chapR !== undefined) {
      if (this.auth !== 'chap-challenged' || !this.chapChallenge) throw new LoginFailure(LoginStatus.InitiatorError, 'CHAP response before a challenge');
      const creds = this.target!.auth.chap!;
      const resp = chapR === undefined ? undefined : decodeBinary(chapR);
      if (chapN !== creds.user || !resp || !chapVerify(this.chapId, creds.secret, this.chapChallenge, resp)) {
        throw new LoginFailure(LoginStatus.AuthenticationFailure, `CHAP authentication failed for user ${JSON.stringify(chapN ?? '')}`);
      }
      const chapI = get('CHAP_I');
      const chapC = get('CHAP_C');
      if (chapI !== undefined || chapC !== undefined) {
        const mutual = this.target!.auth.mutualChap;
        const id = chapI === undefined ? undefined : Number(chapI);
        const challenge = chapC === undefined ? undefined : decodeBinary(chapC);
        if (!mutual) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'initiator asked for mutual CHAP but none is configured');
        if (id === undefined || !Number.isInteger(id) || id < 0 || id > 255 || !challenge) throw new LoginFailure(LoginStatus.InitiatorError, 'malformed mutual CHAP challenge');
        if (challenge.equals(this.chapChallenge)) throw new LoginFailure(LoginStatus.AuthenticationFailure, 'initiator reflected our CHAP challenge');
        out.push(['CHAP_N', mutual.user], ['CHAP_R', encodeBinary(chapResponse(id, mutual.secret, challenge))]);
      }
      this.auth = 'done';
      this.authenticated = true;
      this.chapChallenge = undefined;
    }
    return out;
  }
}
