/**
 * Fuzzing the iSCSI side (issue 6 "Bad input"): the PDU reader (src/iscsi/reader.ts), the BHS
 * accessors (src/iscsi/pdu.ts), text keys (text.ts), negotiation (negotiation.ts), the login
 * state machine (login.ts) and, end to end in-process, a whole connection (connection.ts +
 * session.ts + the SCSI target behind it) fed through a fake socket.
 *
 * Inputs are random bytes and mutated valid encodings (bit flips, inserted / deleted /
 * duplicated bytes, boundary integers written over length fields, truncation), cut at random
 * points. The only acceptable outcomes are a valid decode or a typed error (IscsiError with an
 * IscsiErrorCode, a LoginFailure status, a Reject); never a TypeError / RangeError, never a
 * login answered with TARGET ERROR (what LoginMachine turns an untyped exception into), never an
 * error-level log line from the connection (what it logs for an untyped exception), never an
 * allocation larger than the bytes received.
 *
 * Sizes: see PLAN in test/helpers/fuzz.ts (OFFSITE_FUZZ_RUNS=N for a long run).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { rmSync } from 'node:fs';
import type net from 'node:net';
import test from 'node:test';
import fc from 'fast-check';
import pino from 'pino';
import { LoginStatus, TARGET_LIMITS } from '../../src/iscsi/constants';
import type { Connection } from '../../src/iscsi/connection';
import { IscsiError, IscsiErrorCode } from '../../src/iscsi/errors';
import { LoginMachine, loginRequestFields, type LoginReply, type LoginRequestFields } from '../../src/iscsi/login';
import { KEYS, NOT_UNDERSTOOD, REJECT, IRRELEVANT, defaultOffer, negotiate, rfcDefaults, type SessionParams, type TargetOffer } from '../../src/iscsi/negotiation';
import * as P from '../../src/iscsi/pdu';
import { PduReader } from '../../src/iscsi/reader';
import { IscsiServer } from '../../src/iscsi/server';
import type { TargetAuth, TargetDirectory, TargetEntry } from '../../src/iscsi/targets';
import { MAX_KEY_NAME, MAX_VALUE, encodeText, parseText, type TextPairs } from '../../src/iscsi/text';
import type { ScsiTarget } from '../../src/scsi/port';
import { LogCapture, compact, cutsArb, describeError, feedStream, fuzzing, mutate, mutationsArb, split, timeoutFor, type Mutation } from '../helpers/fuzz';
import { crc, dataOut, frame, loginRequest, logoutRequest, nopOut, pad4, scsiCommand, textData, textRequest, tmfRequest } from '../helpers/iscsi-wire';
import { harness } from '../helpers/scsi-harness';

const ISCSI_CODES = new Set<string>(Object.values(IscsiErrorCode));
const LOGIN_STATUSES = new Set<number>([
  0x0000, 0x0101, 0x0200, 0x0201, 0x0202, 0x0203, 0x0204, 0x0205, 0x0206, 0x0207, 0x0208, 0x0209, 0x020a, 0x020b, 0x0300, 0x0301, 0x0302,
]);
const KEY_NAME = /^[A-Za-z0-9.\-+@_:]+$/;

// ---- PduReader -----------------------------------------------------------------------------------

interface ReaderOutcome {
  pdus: { bhs: Buffer; ahs?: Buffer; data: Buffer }[];
  error?: IscsiError;
  /** Largest `pending` seen after a push. */
  maxPending: number;
  largestAlloc: number;
}

/** Feed `chunks` to a fresh reader; an exception other than IscsiError fails the property. */
function runReader(chunks: Buffer[], o: { max: number; hd: boolean; dd: boolean }): ReaderOutcome {
  const pdus: ReaderOutcome['pdus'] = [];
  const reader = new PduReader(o.max, (p) => pdus.push({ bhs: Buffer.from(p.bhs), ahs: p.ahs && Buffer.from(p.ahs), data: Buffer.from(p.data) }));
  reader.headerDigest = o.hd;
  reader.dataDigest = o.dd;
  return { pdus, ...feedStream(chunks, reader, IscsiError, 'PduReader') };
}

function checkReaderOutcome(out: ReaderOutcome, total: number, o: { max: number; hd: boolean; dd: boolean }): void {
  if (out.error) assert.ok(ISCSI_CODES.has(out.error.code), `unknown IscsiError code ${out.error.code}`);
  let consumed = 0;
  for (const p of out.pdus) {
    assert.equal(p.bhs.length, 48);
    const dlen = P.dataSegmentLength(p.bhs);
    assert.ok(dlen <= o.max, `a PDU with a ${dlen}-byte data segment got past the ${o.max} limit`);
    assert.equal(p.data.length, dlen, 'data is exactly the declared segment');
    assert.equal(p.ahs?.length ?? 0, P.ahsLength(p.bhs), 'AHS is exactly the declared length');
    consumed += 48 + P.ahsLength(p.bhs) + (o.hd ? 4 : 0) + dlen + pad4(dlen) + (o.dd && dlen ? 4 : 0);
  }
  assert.ok(consumed <= total, `PDUs account for ${consumed} bytes of ${total} fed`);
  assert.ok(out.maxPending <= total, `the reader held ${out.maxPending} bytes of ${total} fed`);
  // Beyond the bytes fed, the reader may allocate one AHS (at most 1020 bytes, its length field
  // is 8 bits of words) or one data segment with padding within the limit once a BHS declaring
  // it has arrived; never more.
  assert.ok(out.largestAlloc <= Math.max(total, 1020, o.max + 3), `the reader allocated ${out.largestAlloc} bytes for ${total} fed (limit ${o.max})`);
}

const readerOptions = fc.record({
  max: fc.constantFrom(0, 48, 512, TARGET_LIMITS.loginMaxDataSegment, TARGET_LIMITS.maxRecvDataSegmentLength, 0xffffff),
  hd: fc.boolean(),
  dd: fc.boolean(),
});

test('PduReader: random bytes cut anywhere give whole PDUs or an IscsiError with a known code', { timeout: timeoutFor('iscsi/reader-random', 2) }, (t) => {
  const f = fuzzing(t, 'iscsi/reader-random');
  let errors = 0;
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 4096 }),
        // a plausible header: a small declared length and AHS so the reader goes past the BHS
        fc.tuple(fc.uint8Array({ minLength: 48, maxLength: 48 }), fc.integer({ min: 0, max: 600 }), fc.integer({ min: 0, max: 3 }), fc.uint8Array({ maxLength: 2048 })).map(([h, dlen, ahs, rest]) => {
          const b = Buffer.from(h);
          b[4] = ahs;
          b[5] = 0;
          b[6] = dlen >> 8;
          b[7] = dlen & 0xff;
          return new Uint8Array(Buffer.concat([b, Buffer.from(rest)]));
        }),
      ),
      cutsArb,
      readerOptions,
      (bytes, cuts, o) => {
        f.hit();
        const buf = Buffer.from(bytes);
        const out = runReader(split(buf, cuts), o);
        checkReaderOutcome(out, buf.length, o);
        if (out.error) errors++;
      },
    ),
    f.params,
  );
  f.report(`${errors} ended in an IscsiError`);
});

// Valid initiator PDUs (built from the RFC in test/helpers/iscsi-wire, not with src/iscsi).

const u32 = fc.oneof(fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff), fc.nat());
const smallData = (max: number) => fc.oneof(fc.constant(new Uint8Array(0)), fc.uint8Array({ minLength: 1, maxLength: max }));

/** One valid initiator PDU as header + AHS + data. */
const initiatorPdu: fc.Arbitrary<{ header: Buffer; ahs?: Buffer; data: Buffer }> = fc.oneof(
  fc.record({ csg: fc.integer({ min: 0, max: 1 }), transit: fc.boolean(), itt: u32, keys: fc.dictionary(fc.constantFrom('InitiatorName', 'TargetName', 'SessionType', 'AuthMethod', 'HeaderDigest', 'MaxRecvDataSegmentLength'), fc.string({ maxLength: 40 })) }).map((r) => {
    const data = textData(r.keys);
    return { header: loginRequest({ transit: r.transit, csg: r.csg, nsg: r.csg + 1, isid: Buffer.from('80123456789a', 'hex'), itt: r.itt, cmdSN: 0, expStatSN: 0 }, data.length), data };
  }),
  fc.record({ itt: u32, edtl: u32, cdb: fc.uint8Array({ minLength: 6, maxLength: 16 }), data: smallData(1024), ahsWords: fc.integer({ min: 0, max: 5 }), read: fc.boolean(), write: fc.boolean(), lun: fc.integer({ min: 0, max: 16383 }) }).chain((r) =>
    fc.uint8Array({ minLength: r.ahsWords * 4, maxLength: r.ahsWords * 4 }).map((ahs) => ({
      header: scsiCommand({ itt: r.itt, edtl: r.edtl, cmdSN: 1, expStatSN: 1, cdb: Buffer.from(r.cdb), read: r.read, write: r.write, lun: r.lun, ahsWords: r.ahsWords }, r.data.length),
      ahs: r.ahsWords ? Buffer.from(ahs) : undefined,
      data: Buffer.from(r.data),
    })),
  ),
  fc.record({ final: fc.boolean(), itt: u32, ttt: u32, dataSN: u32, off: u32, data: smallData(2048) }).map((r) => ({
    header: dataOut({ final: r.final, itt: r.itt, ttt: r.ttt, expStatSN: 0, dataSN: r.dataSN, bufferOffset: r.off }, r.data.length),
    data: Buffer.from(r.data),
  })),
  fc.record({ itt: u32, data: smallData(512) }).map((r) => ({ header: nopOut({ itt: r.itt, cmdSN: 2, expStatSN: 2 }, r.data.length), data: Buffer.from(r.data) })),
  fc.record({ itt: u32, cont: fc.boolean(), v: fc.constantFrom('All', '', 'iqn.2026-11.dev.offsite:vol1') }).map((r) => {
    const data = textData({ SendTargets: r.v });
    return { header: textRequest({ itt: r.itt, cont: r.cont, final: !r.cont, cmdSN: 3, expStatSN: 3 }, data.length), data };
  }),
  fc.record({ reason: fc.integer({ min: 0, max: 3 }), itt: u32 }).map((r) => ({ header: logoutRequest({ reason: r.reason, itt: r.itt, cmdSN: 4, expStatSN: 4 }), data: Buffer.alloc(0) })),
  fc.record({ fn: fc.integer({ min: 0, max: 15 }), itt: u32, refItt: u32 }).map((r) => ({ header: tmfRequest({ fn: r.fn, itt: r.itt, refItt: r.refItt, cmdSN: 5, expStatSN: 5, refCmdSN: 5 }), data: Buffer.alloc(0) })),
);

test('PduReader: mutated valid PDU streams give the same outcome however they are cut, and only typed errors', { timeout: timeoutFor('iscsi/reader-mutated', 3) }, (t) => {
  const f = fuzzing(t, 'iscsi/reader-mutated');
  const byCode = new Map<string, number>();
  fc.assert(
    fc.property(
      fc.array(initiatorPdu, { minLength: 1, maxLength: 6 }),
      fc.record({ hd: fc.boolean(), dd: fc.boolean(), max: fc.constantFrom(TARGET_LIMITS.loginMaxDataSegment, TARGET_LIMITS.maxRecvDataSegmentLength) }),
      fc.oneof({ weight: 1, arbitrary: fc.constant([] as Mutation[]) }, { weight: 6, arbitrary: mutationsArb(6) }),
      cutsArb,
      (pdus, o, mutations, cuts) => {
        f.hit();
        const valid = Buffer.concat(pdus.map((p) => frame(p.header, p.data, { ahs: p.ahs, headerDigest: o.hd, dataDigest: o.dd })));
        const bytes = mutate(valid, mutations);
        const whole = runReader([bytes], o);
        const pieces = runReader(split(bytes, cuts), o);
        checkReaderOutcome(whole, bytes.length, o);
        checkReaderOutcome(pieces, bytes.length, o);
        // The same stream cut differently is the same stream.
        assert.equal(pieces.error?.code, whole.error?.code, 'same error however the stream is cut');
        assert.equal(pieces.pdus.length, whole.pdus.length, 'same PDUs however the stream is cut');
        for (let i = 0; i < whole.pdus.length; i++) {
          assert.ok(pieces.pdus[i].bhs.equals(whole.pdus[i].bhs) && pieces.pdus[i].data.equals(whole.pdus[i].data), `PDU ${i} differs between cuts`);
        }
        if (mutations.length === 0) {
          assert.equal(whole.error, undefined, 'an unmutated stream decodes');
          assert.equal(whole.pdus.length, pdus.length);
        }
        const k = whole.error?.code ?? 'decoded';
        byCode.set(k, (byCode.get(k) ?? 0) + 1);
      },
    ),
    f.params,
  );
  f.report([...byCode].map(([k, n]) => `${k} ${n}`).join(', '));
});

test('PduReader: a declared data segment up to 16 MiB or AHS up to 1020 bytes allocates at most what was received plus that one segment, and only within the limit', { timeout: timeoutFor('iscsi/reader-huge-length', 3) }, (t) => {
  const f = fuzzing(t, 'iscsi/reader-huge-length');
  fc.assert(
    fc.property(
      fc.oneof(fc.constantFrom(0xffffff, 0x800000, 0x40001, 0x40000, 0x2001, 0x2000), fc.integer({ min: 0, max: 0xffffff })),
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ maxLength: 4096 }),
      cutsArb,
      readerOptions,
      (dlen, ahsWords, rest, cuts, o) => {
        f.hit();
        const bhs = Buffer.alloc(48);
        bhs[0] = 0x01;
        bhs[4] = ahsWords;
        bhs[5] = dlen >>> 16;
        bhs[6] = (dlen >>> 8) & 0xff;
        bhs[7] = dlen & 0xff;
        const bytes = Buffer.concat([bhs, Buffer.from(rest)]);
        const out = runReader(split(bytes, cuts), o);
        checkReaderOutcome(out, bytes.length, o);
        if (dlen > o.max) {
          assert.equal(out.error?.code, IscsiErrorCode.PduTooLarge, 'an oversized segment is refused at the header');
          assert.ok(out.largestAlloc <= Math.max(bytes.length, 48, ahsWords * 4), `${out.largestAlloc} bytes allocated for a refused ${dlen}-byte segment`);
        } else {
          assert.ok(out.largestAlloc <= Math.max(bytes.length, 48, ahsWords * 4, dlen + pad4(dlen)), `${out.largestAlloc} bytes allocated for a ${dlen}-byte segment`);
        }
      },
    ),
    f.params,
  );
  f.report();
});

// ---- BHS accessors ----------------------------------------------------------------------------

test('BHS accessors and login request fields read any 48 bytes without throwing, within their ranges', { timeout: timeoutFor('iscsi/bhs-fields', 1) }, (t) => {
  const f = fuzzing(t, 'iscsi/bhs-fields');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 48, maxLength: 48 }), (raw) => {
      f.hit();
      const bhs = Buffer.from(raw);
      assert.ok(P.opcode(bhs) >= 0 && P.opcode(bhs) < 64);
      assert.equal(P.ahsLength(bhs) % 4, 0);
      assert.ok(P.dataSegmentLength(bhs) >= 0 && P.dataSegmentLength(bhs) <= 0xffffff);
      for (const fn of [P.itt, P.ttt, P.cmdSN, P.expStatSN, P.dataSN, P.bufferOffset, P.expectedDataLength]) {
        const v = fn(bhs);
        assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffffffff);
      }
      const lun = P.decodeLun(bhs);
      assert.ok(Number.isInteger(lun) && lun >= -1 && lun <= 16383, `LUN ${lun}`);
      const req = loginRequestFields(bhs);
      assert.ok(req.csg >= 0 && req.csg <= 3 && req.nsg >= 0 && req.nsg <= 3);
      assert.equal(req.isid.length, 6);
      // What the target echoes back from it is a well-formed header.
      const resp = P.loginResponse({ transit: req.transit, cont: false, csg: req.csg, nsg: req.nsg, versionMax: 0, versionActive: 0, isid: req.isid, tsih: req.tsih, itt: req.itt, status: 0x0200 }, { statSN: req.expStatSN, expCmdSN: req.cmdSN, maxCmdSN: req.cmdSN }, 0);
      assert.equal(resp.length, 48);
      assert.ok(resp.subarray(8, 14).equals(req.isid));
      assert.equal(resp.readUInt32BE(16), req.itt);
      const rej = P.reject(0x09, { statSN: 0, expCmdSN: 0, maxCmdSN: 0 }, 48);
      assert.equal(P.dataSegmentLength(rej), 48);
    }),
    f.params,
  );
  f.report();
});

// ---- Text keys ----------------------------------------------------------------------------------

const keyNameArb = fc.oneof(
  fc.constantFrom(...Object.keys(KEYS), 'InitiatorName', 'TargetName', 'SessionType', 'AuthMethod', 'CHAP_A', 'CHAP_R', 'X-com.example.k', 'SendTargets'),
  fc.stringMatching(/^[A-Za-z0-9.\-+@_:]{1,70}$/),
  fc.string({ minLength: 0, maxLength: 10 }),
);
const valueArb = fc.oneof(
  fc.constantFrom('Yes', 'No', 'None', 'CRC32C', 'CRC32C,None', '0', '512', '0x200', '16777215', '99999999999', 'All', '', 'Reject', 'NotUnderstood'),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.integer({ min: 8180, max: 8200 }).map((n) => 'v'.repeat(n)),
);

function checkPairs(pairs: TextPairs, what: string): void {
  const seen = new Set<string>();
  for (const [k, v] of pairs) {
    assert.ok(k.length > 0 && k.length <= MAX_KEY_NAME && KEY_NAME.test(k), `${what}: invalid key name ${JSON.stringify(k)}`);
    assert.ok(v.length <= MAX_VALUE, `${what}: value of ${k} is ${v.length} long`);
    assert.ok(!v.includes('\0'), `${what}: value of ${k} holds a NUL`);
    assert.ok(!seen.has(k), `${what}: key ${k} twice`);
    seen.add(k);
  }
}

test('parseText: random and mutated key=value data parses into valid unique keys or throws IscsiError(ISCSI_TEXT); parsed text round-trips', { timeout: timeoutFor('iscsi/text', 2) }, (t) => {
  const f = fuzzing(t, 'iscsi/text');
  let parsed = 0;
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 600 }).map((b) => Buffer.from(b)),
        fc.tuple(fc.array(fc.tuple(keyNameArb, valueArb), { maxLength: 12 }), fc.oneof(fc.constant([] as Mutation[]), mutationsArb(4))).map(([pairs, m]) =>
          mutate(Buffer.from(pairs.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8'), m),
        ),
      ),
      (data) => {
        f.hit();
        let pairs: TextPairs;
        try {
          pairs = parseText(data);
        } catch (e) {
          if (e instanceof IscsiError && e.code === IscsiErrorCode.Text) return;
          assert.fail(`parseText threw ${describeError(e)}`);
        }
        parsed++;
        checkPairs(pairs, 'parsed');
        assert.deepEqual(parseText(encodeText(pairs)), pairs, 'encode(parse(x)) parses to the same pairs');
      },
    ),
    f.params,
  );
  f.report(`${parsed} parsed`);
});

// ---- Negotiation --------------------------------------------------------------------------------

const offerArb: fc.Arbitrary<TargetOffer> = fc.oneof(
  fc.constant(defaultOffer()),
  fc.record({
    digests: fc.constantFrom<TargetOffer['digests']>(['CRC32C', 'None'], ['CRC32C'], ['None'], ['None', 'CRC32C']),
    maxRecvDataSegmentLength: fc.constantFrom(512, 8192, 262144, 0xffffff),
    maxBurstLength: fc.constantFrom(512, 65536, 262144, 16776192),
    firstBurstLength: fc.constantFrom(512, 65536, 262144),
    immediateData: fc.boolean(),
    initialR2T: fc.boolean(),
    maxOutstandingR2T: fc.constantFrom(1, 4, 65535),
    defaultTime2Wait: fc.constantFrom(0, 2, 3600),
    defaultTime2Retain: fc.constantFrom(0, 20, 3600),
  }),
);

const opKeyArb = fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...Object.keys(KEYS)) }, { weight: 1, arbitrary: fc.constantFrom('X-com.example.k', 'SendTargets', 'Foo') });
const opValueArb = fc.oneof(
  fc.constantFrom('Yes', 'No', 'yes', 'None', 'CRC32C', 'CRC32C,None', 'None,CRC32C', 'CRC32C,CRC32C', 'MD5', 'RFC3720', 'RFC3720,Foo', ''),
  fc.constantFrom('0', '1', '2', '3', '511', '512', '65535', '65536', '262144', '16777215', '16777216', '3600', '3601', '4294967295', '4294967296', '9999999999', '0x0', '0x200', '0xFFFFFF', '0x1000000', '0xffffffff', '0x', '-1', '1e3', ' 512', '512 '),
  fc.nat().map(String),
  fc.string({ maxLength: 12 }),
);

function checkParams(p: SessionParams, offer: TargetOffer, what: string): void {
  const within = (v: number, lo: number, hi: number, name: string) => assert.ok(Number.isInteger(v) && v >= lo && v <= hi, `${what}: ${name} = ${v}, outside ${lo}..${hi}`);
  within(p.initiatorMaxRecvDataSegmentLength, 512, 0xffffff, 'initiatorMaxRecvDataSegmentLength');
  within(p.maxBurstLength, 512, 0xffffff, 'maxBurstLength');
  within(p.firstBurstLength, 512, 0xffffff, 'firstBurstLength');
  assert.ok(p.firstBurstLength <= p.maxBurstLength, `${what}: FirstBurstLength ${p.firstBurstLength} > MaxBurstLength ${p.maxBurstLength}`);
  within(p.maxOutstandingR2T, 1, 65535, 'maxOutstandingR2T');
  within(p.defaultTime2Wait, 0, 3600, 'defaultTime2Wait');
  within(p.defaultTime2Retain, 0, 3600, 'defaultTime2Retain');
  within(p.errorRecoveryLevel, 0, 0, 'errorRecoveryLevel');
  within(p.maxConnections, 1, 1, 'maxConnections');
  if (!offer.digests.includes('CRC32C')) assert.equal(p.headerDigest || p.dataDigest, false, `${what}: a digest the target does not offer`);
}

test('negotiate: any operational keys and values get one answer each (a value the rules allow, Reject, NotUnderstood or Irrelevant) and leave the parameters in range', { timeout: timeoutFor('iscsi/negotiation', 2) }, (t) => {
  const f = fuzzing(t, 'iscsi/negotiation');
  fc.assert(
    fc.property(offerArb, fc.array(fc.uniqueArray(fc.tuple(opKeyArb, opValueArb), { selector: ([k]) => k, maxLength: 16 }), { minLength: 1, maxLength: 3 }), (offer, rounds) => {
      f.hit();
      const params = rfcDefaults();
      for (const pairs of rounds) {
        let answers: TextPairs;
        try {
          answers = negotiate(pairs, offer, params).answers;
        } catch (e) {
          assert.fail(`negotiate threw ${describeError(e)}`);
        }
        assert.deepEqual(answers.map(([k]) => k), pairs.map(([k]) => k), 'one answer per key, in order');
        checkPairs(answers, 'answers');
        for (const [k, v] of answers) {
          const rule = KEYS[k];
          if (!rule) {
            assert.equal(v, NOT_UNDERSTOOD, `${k}`);
            continue;
          }
          if (v === REJECT || v === IRRELEVANT) continue;
          switch (rule.kind) {
            case 'digest':
              assert.ok(offer.digests.includes(v as 'None'), `${k}=${v} is not offered`);
              break;
            case 'min': // min(offered, ours), the offer being at least lo
              assert.match(v, /^[0-9]+$/, `${k}=${v}`);
              assert.ok(Number(v) >= Math.min(rule.lo, rule.ours(offer)) && Number(v) <= rule.hi, `${k}=${v} out of range`);
              break;
            case 'max': // max(offered, ours), the offer being at most hi
              assert.match(v, /^[0-9]+$/, `${k}=${v}`);
              assert.ok(Number(v) >= rule.lo && Number(v) <= Math.max(rule.hi, rule.ours(offer)), `${k}=${v} out of range`);
              break;
            case 'declare': // ours, whatever the initiator declared
              assert.equal(v, String(offer.maxRecvDataSegmentLength), `${k}=${v}`);
              break;
            case 'and':
            case 'or':
              assert.ok(v === 'Yes' || v === 'No', `${k}=${v}`);
              break;
            case 'fixed':
              break;
          }
        }
        checkParams(params, offer, `after ${JSON.stringify(pairs)}`);
        // What the target answered in this round is what it enforces.
        const answered = new Map(answers);
        for (const [k, field] of [['MaxBurstLength', 'maxBurstLength'], ['FirstBurstLength', 'firstBurstLength'], ['MaxOutstandingR2T', 'maxOutstandingR2T']] as const) {
          const v = answered.get(k);
          if (v !== undefined && v !== REJECT) assert.equal(Number(v), params[field], `${k} answered ${v} but ${field} is ${params[field]}`);
        }
      }
    }),
    f.params,
  );
  f.report();
});

// ---- Login state machine ----------------------------------------------------------------------

const PREFIX = 'iqn.2026-11.dev.offsite';
const ALLOWED = 'iqn.1994-05.com.example:allowed';
const CHAP = { user: 'alice', secret: 'alice-secret-0123' };
const MUTUAL = { user: 'the-target', secret: 'target-secret-4567' };

function entry(name: string, auth: TargetAuth, alias?: string): TargetEntry {
  return { name: `${PREFIX}:${name}`, alias, auth, scsi: {} as ScsiTarget };
}
const TARGETS = [
  entry('open', {}, 'open-alias'),
  entry('secure', { chap: CHAP }),
  entry('mutual', { chap: CHAP, mutualChap: MUTUAL }, 'mutual-alias'),
  entry('restricted', { allowedInitiators: [ALLOWED] }),
];
const directory: TargetDirectory = { targets: () => TARGETS, lookup: (n) => TARGETS.find((x) => x.name === n) };

type Flags = { transit: boolean; cont: boolean; csg: number; nsg: number };
const flagsArb: fc.Arbitrary<Flags> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<Flags>({ transit: true, cont: false, csg: 0, nsg: 1 }, { transit: true, cont: false, csg: 1, nsg: 3 }, { transit: true, cont: false, csg: 0, nsg: 3 }, { transit: false, cont: false, csg: 0, nsg: 0 }, { transit: false, cont: false, csg: 1, nsg: 0 }) },
  { weight: 1, arbitrary: fc.record({ transit: fc.boolean(), cont: fc.boolean(), csg: fc.integer({ min: 0, max: 3 }), nsg: fc.integer({ min: 0, max: 3 }) }) },
);

const loginKeyArb: fc.Arbitrary<[string, string]> = fc.oneof(
  fc.tuple(fc.constant('InitiatorName'), fc.constantFrom(ALLOWED, 'iqn.1994-05.com.example:other', '', 'i'.repeat(224))),
  fc.tuple(fc.constant('TargetName'), fc.constantFrom(...TARGETS.map((x) => x.name), `${PREFIX}:nope`, '')),
  fc.tuple(fc.constant('SessionType'), fc.constantFrom('Normal', 'Discovery', 'Bogus', '')),
  fc.tuple(fc.constant('InitiatorAlias'), fc.string({ maxLength: 20 })),
  fc.tuple(fc.constant('AuthMethod'), fc.constantFrom('None', 'CHAP', 'CHAP,None', 'None,CHAP', 'SRP', 'KRB5,SPKM1', '')),
  fc.tuple(fc.constant('CHAP_A'), fc.constantFrom('5', '7,5', '7', '', 'x')),
  fc.tuple(fc.constantFrom('CHAP_N', 'CHAP_R', 'CHAP_I', 'CHAP_C'), fc.constantFrom('alice', '0x00', '0b', '0bAAAA', '0x' + '00'.repeat(2000), '300', '')),
  fc.tuple(fc.constantFrom('TargetAlias', 'TargetAddress', 'TargetPortalGroupTag'), fc.constantFrom('x', '1')),
  fc.tuple(opKeyArb, opValueArb),
);

type LoginAction =
  /** `flags` 'auto': the current stage, moving on to the next one when `transit`. */
  | { kind: 'req'; flags: Flags | 'auto'; transit: boolean; versionMin: number; change?: 'isid' | 'tsih' | 'cid'; pairs: [string, string][]; mutations: Mutation[] }
  | { kind: 'chapA'; value: string }
  | { kind: 'chap'; transit: boolean; userOk: boolean; responseOk: boolean; mutual: 'none' | 'ok' | 'reflect' | 'bad-id' | 'bad-challenge' };

const loginActionArb: fc.Arbitrary<LoginAction> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('req' as const),
      flags: fc.oneof({ weight: 4, arbitrary: fc.constant('auto' as const) }, { weight: 1, arbitrary: flagsArb }),
      transit: fc.boolean(),
      versionMin: fc.constantFrom(0, 0, 0, 0, 0, 0, 1, 255),
      change: fc.oneof({ weight: 15, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('isid' as const, 'tsih' as const, 'cid' as const) }),
      pairs: fc.uniqueArray(loginKeyArb, { selector: ([k]) => k, maxLength: 10 }),
      mutations: fc.oneof({ weight: 4, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: mutationsArb(3) }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('chapA' as const), value: fc.constantFrom('5', '5', '7,5', '7', '') }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('chap' as const),
      transit: fc.boolean(),
      userOk: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      responseOk: fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      mutual: fc.constantFrom('none' as const, 'none' as const, 'ok' as const, 'reflect' as const, 'bad-id' as const, 'bad-challenge' as const),
    }),
  },
);

/** A plausible first request, so that most sequences get past the identity checks. */
const firstPairsArb = fc.record({
  initiator: fc.constantFrom(ALLOWED, ALLOWED, 'iqn.1994-05.com.example:other'),
  target: fc.constantFrom(...TARGETS),
  discovery: fc.constantFrom(false, false, false, true),
  /** The AuthMethod the target wants (or a random one). */
  auth: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('None', 'CHAP', 'CHAP,None') }),
  security: fc.boolean(),
});

const md5 = (id: number, secret: string, challenge: Buffer) => createHash('md5').update(Buffer.from([id & 0xff])).update(secret).update(challenge).digest();

test('LoginMachine: random and mutated login conversations end in a defined status, never TARGET ERROR, and never let an unauthenticated or unauthorized initiator in', { timeout: timeoutFor('iscsi/login', 4) }, (t) => {
  const f = fuzzing(t, 'iscsi/login');
  const outcomes = new Map<string, number>();
  let largestAnswer = 0;
  fc.assert(
    fc.property(firstPairsArb, fc.array(loginActionArb, { minLength: 1, maxLength: 8 }), (first, actions) => {
      f.hit();
      const m = new LoginMachine({ directory, offer: defaultOffer(), portalGroupTag: 1 });
      const isid = Buffer.from('80aabbcc0001', 'hex');
      let chapI: number | undefined;
      let chapC: Buffer | undefined;
      let last = 'no reply';
      const auth = first.auth ?? (first.target.auth.chap && !first.discovery ? 'CHAP' : 'None');
      const firstPairs: [string, string][] = [['InitiatorName', first.initiator], first.discovery ? ['SessionType', 'Discovery'] : ['TargetName', first.target.name]];
      if (first.security) firstPairs.push(['AuthMethod', auth]);
      const all: LoginAction[] = [{ kind: 'req', flags: first.security ? { transit: true, cont: false, csg: 0, nsg: 1 } : { transit: true, cont: false, csg: 1, nsg: 3 }, transit: true, versionMin: 0, pairs: firstPairs, mutations: [] }, ...actions];
      for (const a of all) {
        let pairs: [string, string][];
        let data: Buffer;
        let flags: Flags;
        const auto = (transit: boolean): Flags => ({ transit, cont: false, csg: m.stage, nsg: transit ? (m.stage === 0 ? 1 : 3) : 0 });
        if (a.kind === 'req') {
          pairs = a.pairs;
          data = mutate(textData(pairs), a.mutations);
          flags = a.flags === 'auto' ? auto(a.transit) : a.flags;
        } else if (a.kind === 'chapA') {
          pairs = [['CHAP_A', a.value]];
          data = textData(pairs);
          flags = auto(false);
        } else {
          const id = chapI ?? 0;
          const challenge = chapC ?? Buffer.alloc(16);
          pairs = [
            ['CHAP_N', a.userOk ? CHAP.user : 'mallory'],
            ['CHAP_R', `0x${(a.responseOk ? md5(id, CHAP.secret, challenge) : md5(id, 'wrong-secret', challenge)).toString('hex')}`],
          ];
          if (a.mutual === 'ok') pairs.push(['CHAP_I', '17'], ['CHAP_C', `0x${'5a'.repeat(16)}`]);
          if (a.mutual === 'reflect') pairs.push(['CHAP_I', '17'], ['CHAP_C', `0x${challenge.toString('hex')}`]);
          if (a.mutual === 'bad-id') pairs.push(['CHAP_I', '256'], ['CHAP_C', `0x${'5a'.repeat(16)}`]);
          if (a.mutual === 'bad-challenge') pairs.push(['CHAP_I', '3'], ['CHAP_C', 'zz']);
          data = textData(pairs);
          flags = auto(a.transit);
        }
        const req: LoginRequestFields = {
          ...flags,
          versionMax: 0,
          versionMin: a.kind === 'req' ? a.versionMin : 0,
          isid: a.kind === 'req' && a.change === 'isid' ? Buffer.from('80aabbcc0002', 'hex') : isid,
          tsih: a.kind === 'req' && a.change === 'tsih' ? 5 : 0,
          itt: 1,
          cid: a.kind === 'req' && a.change === 'cid' ? 1 : 0,
          cmdSN: 0,
          expStatSN: 0,
        };
        let reply: LoginReply;
        try {
          reply = m.step(req, data);
        } catch (e) {
          assert.fail(`LoginMachine.step threw ${describeError(e)}`);
        }
        checkLoginReply(m, reply);
        largestAnswer = Math.max(largestAnswer, encodeText(reply.pairs).length);
        const got = new Map(reply.pairs);
        if (got.has('CHAP_I')) chapI = Number(got.get('CHAP_I'));
        if (got.has('CHAP_C')) chapC = Buffer.from(got.get('CHAP_C')!.slice(2), 'hex');
        last = reply.complete ? 'full feature' : `0x${reply.status.toString(16).padStart(4, '0')}`;
        if (reply.status !== LoginStatus.Success || reply.complete) break; // the connection stops here
      }
      outcomes.set(last, (outcomes.get(last) ?? 0) + 1);
    }),
    f.params,
  );
  f.report(`outcomes ${[...outcomes].sort().map(([k, n]) => `${k} ${n}`).join(', ')}; largest answer ${largestAnswer} bytes`);
});

// Found by fuzzing: an initiator that sends many keys the target does not know, in continued
// Login Requests of at most 8192 bytes each, gets them all answered NotUnderstood — more than the
// 8192 bytes an initiator accepts in one Login Response during login (RFC 7143 §13.12). The answer
// is sent in pieces with the C bit (§11.13.3); the initiator asks for each next piece with an empty
// Login Request, and only the last piece carries the transit.
test('login answers longer than 8192 bytes come back in Login Responses continued with the C bit', () => {
  const m = new LoginMachine({ directory, offer: defaultOffer(), portalGroupTag: 1 });
  const keys = Array.from({ length: 700 }, (_, i): [string, string] => [`X-com.example.${'k'.repeat(40)}${i}`, 'v']);
  const text = textData([['InitiatorName', ALLOWED], ['TargetName', TARGETS[0].name], ...keys]);
  const req = (transit: boolean, cont: boolean) => ({ transit, cont, csg: 0, nsg: 1, versionMax: 0, versionMin: 0, isid: Buffer.alloc(6), tsih: 0, itt: 1, cid: 0, cmdSN: 0, expStatSN: 0 });
  let reply: LoginReply | undefined;
  for (let off = 0; off < text.length; off += TARGET_LIMITS.loginMaxDataSegment) {
    const last = off + TARGET_LIMITS.loginMaxDataSegment >= text.length;
    reply = m.step(req(last, !last), text.subarray(off, off + TARGET_LIMITS.loginMaxDataSegment));
    if (!last) assert.ok(!reply.pairs.length && !reply.text, 'nothing is answered until the request text is complete');
  }
  const pieces: Buffer[] = [];
  for (let n = 0; reply!.cont; n++) {
    assert.equal(reply!.status, LoginStatus.Success);
    assert.equal(reply!.transit, false, 'a continued response never transits (C and T are exclusive)');
    assert.ok(reply!.text && reply!.text.length === TARGET_LIMITS.loginMaxDataSegment);
    pieces.push(reply!.text!);
    assert.ok(n < 20);
    reply = m.step(req(true, false), Buffer.alloc(0));
  }
  assert.equal(reply!.status, LoginStatus.Success, reply!.reason);
  assert.ok(reply!.transit && reply!.nsg === 1, 'the last piece carries the transit the initiator asked for');
  assert.ok(reply!.text && reply!.text.length <= TARGET_LIMITS.loginMaxDataSegment);
  pieces.push(reply!.text!);
  assert.ok(pieces.length >= 3, `${pieces.length} pieces`);
  const answers = parseText(Buffer.concat(pieces));
  assert.deepEqual(answers.filter(([k]) => k.startsWith('X-com.example.')), keys.map(([k]) => [k, 'NotUnderstood']));
  assert.ok(answers.some(([k]) => k === 'TargetPortalGroupTag'));
  // The login goes on normally afterwards.
  const op = m.step({ ...req(true, false), csg: 1, nsg: 3 }, textData([['MaxBurstLength', '65536']]));
  assert.equal(op.status, LoginStatus.Success, op.reason);
  assert.ok(op.complete);
  // A non-empty request while a continued response is pending is a protocol error.
  const m2 = new LoginMachine({ directory, offer: defaultOffer(), portalGroupTag: 1 });
  for (let off = 0; off < text.length; off += TARGET_LIMITS.loginMaxDataSegment) {
    const last = off + TARGET_LIMITS.loginMaxDataSegment >= text.length;
    reply = m2.step(req(last, !last), text.subarray(off, off + TARGET_LIMITS.loginMaxDataSegment));
  }
  assert.ok(reply!.cont);
  assert.equal(m2.step(req(false, false), textData([['MaxBurstLength', '65536']])).status, LoginStatus.InitiatorError);
});

function checkLoginReply(m: LoginMachine, r: LoginReply): void {
  assert.notEqual(r.status, LoginStatus.TargetError, `TARGET ERROR: an untyped exception inside the login machine: ${r.reason}`);
  assert.ok(LOGIN_STATUSES.has(r.status), `status 0x${r.status.toString(16)}`);
  assert.ok(r.csg === 0 || r.csg === 1, `csg ${r.csg}`);
  if (r.transit) assert.ok((r.nsg === 1 || r.nsg === 3) && r.nsg > r.csg, `transit ${r.csg} -> ${r.nsg}`);
  checkPairs(r.pairs, 'login answers');
  assert.deepEqual(parseText(encodeText(r.pairs)), r.pairs, 'the answers parse back');
  checkParams(m.params, defaultOffer(), 'login');
  if (r.status !== LoginStatus.Success) {
    assert.equal(r.complete, false);
    assert.equal(r.pairs.length, 0);
  }
  if (r.complete) {
    assert.ok(r.transit && r.nsg === 3, 'complete means a transit to full feature phase');
    assert.ok(m.initiatorName, 'no InitiatorName');
    if (m.sessionType === 'Normal') {
      assert.ok(m.target, 'a normal session without a target');
      if (m.target.auth.chap) assert.ok(m.authenticated, `login to ${m.target.name} completed without CHAP`);
      const allowed = m.target.auth.allowedInitiators;
      if (allowed?.length) assert.ok(allowed.includes(m.initiatorName), `${m.initiatorName} let into ${m.target.name}`);
    }
  }
}

// ---- A whole connection, in-process ----------------------------------------------------------

/** Just enough of net.Socket for Connection: records what the target writes. */
let fakeSockets = 0;
class FakeSocket extends EventEmitter {
  /** A new source address each time, so the login rate limit (per address) never steps in. */
  readonly remoteAddress = `10.${(++fakeSockets >> 16) & 0xff}.${(fakeSockets >> 8) & 0xff}.${fakeSockets & 0xff}`;
  readonly remotePort = 50000;
  readonly localAddress = '127.0.0.1';
  readonly localPort = 3260;
  readonly out: Buffer[] = [];
  destroyed = false;
  writableLength = 0;
  private paused = false;
  setNoDelay(): void {}
  cork(): void {}
  uncork(): void {}
  write(b: Buffer, cb?: () => void): boolean {
    if (!this.destroyed) this.out.push(Buffer.from(b));
    if (cb) process.nextTick(cb);
    return true;
  }
  end(): void {
    this.destroy();
  }
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.nextTick(() => this.emit('close', false));
  }
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  isPaused(): boolean {
    return this.paused;
  }
}

const CONN_TARGET = `${PREFIX}:fuzz`;
const TARGET_OPCODES = new Set([0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f]);

interface ConnScenario {
  hd: boolean;
  dd: boolean;
  discovery: boolean;
  mrdsl: number;
  immediateData: boolean;
  initialR2T: boolean;
  firstBurst: number;
  maxBurst: number;
  ffp: Buffer[];
  target: 'login' | 'ffp' | 'none';
  mutations: Mutation[];
  cuts: number[];
  yieldBetweenChunks: boolean;
}

const cdbArb = fc.oneof(
  fc.constantFrom(
    Buffer.from([0x00, 0, 0, 0, 0, 0]), // TEST UNIT READY
    Buffer.from([0x12, 0, 0, 0, 0xff, 0]), // INQUIRY
    Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // READ CAPACITY 10
    Buffer.from([0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]), // REPORT LUNS
    Buffer.from([0x1a, 0, 0x3f, 0, 0xff, 0]), // MODE SENSE 6
  ),
  fc.record({ op: fc.constantFrom(0x28, 0x2a, 0x2f, 0x41), lba: fc.integer({ min: 0, max: 2100 }), n: fc.integer({ min: 0, max: 40 }) }).map(({ op, lba, n }) => {
    const c = Buffer.alloc(10);
    c[0] = op;
    c.writeUInt32BE(lba, 2);
    c.writeUInt16BE(n, 7);
    return c;
  }),
  fc.uint8Array({ minLength: 16, maxLength: 16 }).map((b) => Buffer.from(b)),
);

/** Full-feature PDUs; `i` numbers them (ITT / CmdSN), data framed with the negotiated digests later. */
const ffpPduArb = (i: number, s: { immediateData: boolean; firstBurst: number; maxBurst: number }): fc.Arbitrary<{ header: Buffer; data: Buffer; ahs?: Buffer; immediate: boolean }> =>
  fc.oneof(
    {
      weight: 6,
      arbitrary: fc.record({ cdb: cdbArb, read: fc.boolean(), write: fc.boolean(), edtl: fc.oneof(fc.constantFrom(0, 512, 4096, 20480, 70000, 0x4000001), fc.integer({ min: 0, max: 65536 })), imm: fc.integer({ min: 0, max: 9000 }), conform: fc.constantFrom(true, true, true, true, false), final: fc.boolean(), lun: fc.constantFrom(0, 0, 0, 1, 300), immediate: fc.constantFrom(false, false, true), ahsWords: fc.constantFrom(0, 0, 0, 0, 1, 5) }).map((r) => {
        // Mostly what a conforming initiator sends (immediate data only with W, within the negotiated limits), now and then not.
        const immLen = r.conform ? (r.write && s.immediateData ? Math.min(r.imm, r.edtl, s.firstBurst, s.maxBurst, 8192) : 0) : r.imm;
        const data = Buffer.alloc(immLen, 0x5a);
        const ahs = r.ahsWords ? Buffer.alloc(r.ahsWords * 4, 0x11) : undefined;
        if (ahs) ahs.writeUInt16BE(r.ahsWords * 4 - 3, 0), (ahs[2] = 1);
        return { header: scsiCommand({ itt: i, edtl: r.edtl, cmdSN: 0, expStatSN: 0, cdb: r.cdb, read: r.read, write: r.write, final: r.conform ? !(r.write && !s.immediateData) || r.final : r.final, lun: r.lun, immediate: r.immediate, ahsWords: r.ahsWords }, data.length), data, ahs, immediate: r.immediate };
      }),
    },
    {
      weight: 4,
      arbitrary: fc.record({ itt: fc.integer({ min: 1, max: i + 1 }), ttt: fc.constantFrom(0xffffffff, 1, 2, 3, 0xffffffff), dataSN: fc.constantFrom(0, 0, 1, 7), off: fc.constantFrom(0, 512, 4096, 8192, 16384, 65536, 0xfffffe00), len: fc.constantFrom(0, 512, 4096, 8192, 9000), final: fc.boolean() }).map((r) => ({
        header: dataOut({ final: r.final, itt: r.itt, ttt: r.ttt, expStatSN: 0, dataSN: r.dataSN, bufferOffset: r.off }, r.len),
        data: Buffer.alloc(r.len, 0xa5),
        immediate: true,
      })),
    },
    { weight: 1, arbitrary: fc.record({ ping: fc.boolean(), len: fc.constantFrom(0, 10, 9000), immediate: fc.boolean() }).map((r) => ({ header: nopOut({ itt: r.ping ? 0xffffffff : i, ttt: r.ping ? 1 : 0xffffffff, cmdSN: 0, expStatSN: 0, immediate: r.immediate }, r.len), data: Buffer.alloc(r.len, 1), immediate: r.immediate })) },
    {
      weight: 1,
      arbitrary: fc.record({ cont: fc.boolean(), ttt: fc.constantFrom(0xffffffff, 0xffffffff, 1), keys: fc.constantFrom<Record<string, string>>({ SendTargets: 'All' }, { SendTargets: '' }, { MaxRecvDataSegmentLength: '512' }, { HeaderDigest: 'None' }, { 'X-foo': 'bar' }) }).map((r) => {
        const data = textData(r.keys);
        return { header: textRequest({ itt: i, cont: r.cont, final: !r.cont, ttt: r.ttt, cmdSN: 0, expStatSN: 0 }, data.length), data, immediate: true };
      }),
    },
    { weight: 1, arbitrary: fc.record({ fn: fc.integer({ min: 0, max: 9 }), ref: fc.integer({ min: 1, max: i + 1 }), lun: fc.constantFrom(0, 1) }).map((r) => ({ header: tmfRequest({ fn: r.fn, itt: i, refItt: r.ref, lun: r.lun, cmdSN: 0, expStatSN: 0, refCmdSN: 0 }), data: Buffer.alloc(0), immediate: true })) },
    { weight: 1, arbitrary: fc.constantFrom(0, 1, 2, 5).map((reason) => ({ header: logoutRequest({ reason, itt: i, cmdSN: 0, expStatSN: 0 }), data: Buffer.alloc(0), immediate: true })) },
    {
      weight: 1,
      arbitrary: fc.record({ op: fc.constantFrom(0x03, 0x10, 0x07, 0x1c, 0x3f), len: fc.constantFrom(0, 4, 100) }).map((r) => {
        const b = Buffer.alloc(48);
        b[0] = 0x40 | r.op;
        b[1] = 0x80;
        b[7] = r.len;
        b.writeUInt32BE(i, 16);
        return { header: b, data: Buffer.alloc(r.len), immediate: true };
      }),
    },
  );

const scenarioArb: fc.Arbitrary<ConnScenario> = fc
  .record({
    hd: fc.boolean(),
    dd: fc.boolean(),
    discovery: fc.constantFrom(false, false, false, true),
    mrdsl: fc.constantFrom(512, 8192, 262144),
    immediateData: fc.boolean(),
    initialR2T: fc.boolean(),
    firstBurst: fc.constantFrom(512, 8192, 65536),
    maxBurst: fc.constantFrom(512, 16384, 262144),
    n: fc.integer({ min: 1, max: 12 }),
    target: fc.constantFrom<ConnScenario['target']>('ffp', 'ffp', 'ffp', 'login', 'none', 'none'),
    mutations: mutationsArb(3),
    cuts: cutsArb,
    yieldBetweenChunks: fc.boolean(),
  })
  .chain((s) =>
    fc.tuple(...Array.from({ length: s.n }, (_, i) => ffpPduArb(i + 1, s))).map((pdus) => {
      let cmdSN = 0;
      const ffp = pdus.map((p) => {
        const h = Buffer.from(p.header);
        const op = h[0] & 0x3f;
        // Number the commands in order (non-immediate ones take a CmdSN) so most land in the window.
        if (op !== 0x05) {
          h.writeUInt32BE(cmdSN, 24);
          if (!(h[0] & 0x40)) cmdSN = (cmdSN + 1) >>> 0;
        }
        return compact(frame(h, p.data, { ahs: p.ahs, headerDigest: s.hd, dataDigest: s.dd }));
      });
      const { n: _n, ...rest } = s;
      return { ...rest, ffp };
    }),
  );

function loginBytes(s: ConnScenario): Buffer {
  const isid = Buffer.from('80aabbcc0001', 'hex');
  const sec = textData({ InitiatorName: 'iqn.1994-05.com.example:fuzzer', ...(s.discovery ? { SessionType: 'Discovery' } : { TargetName: CONN_TARGET, SessionType: 'Normal' }), AuthMethod: 'None' });
  const op = textData({
    HeaderDigest: s.hd ? 'CRC32C' : 'None',
    DataDigest: s.dd ? 'CRC32C' : 'None',
    MaxRecvDataSegmentLength: String(s.mrdsl),
    ImmediateData: s.immediateData ? 'Yes' : 'No',
    InitialR2T: s.initialR2T ? 'Yes' : 'No',
    FirstBurstLength: String(s.firstBurst),
    MaxBurstLength: String(s.maxBurst),
    MaxOutstandingR2T: '2',
  });
  return Buffer.concat([
    frame(loginRequest({ transit: true, csg: 0, nsg: 1, isid, itt: 0, cmdSN: 0, expStatSN: 0 }, sec.length), sec),
    frame(loginRequest({ transit: true, csg: 1, nsg: 3, isid, itt: 0, cmdSN: 0, expStatSN: 1 }, op.length), op),
  ]);
}

/** Walk what the target sent: whole PDUs, known opcodes, correct digests (after the login). */
const sentOpcodes = new Map<number, number>();
/** `params`: what the session negotiated (undefined when the login did not complete). */
function checkTargetOutput(bytes: Buffer, params: SessionParams | undefined): { pdus: number; rejects: number; loggedIn: boolean } {
  const hd = params?.headerDigest ?? false;
  const dd = params?.dataDigest ?? false;
  let off = 0;
  let digests = false;
  let loggedIn = false;
  let pdus = 0;
  let rejects = 0;
  while (off < bytes.length) {
    assert.ok(off + 48 <= bytes.length, `the target sent a partial BHS at ${off}`);
    const bhs = bytes.subarray(off, off + 48);
    const op = bhs[0] & 0x3f;
    assert.ok(TARGET_OPCODES.has(op), `the target sent opcode 0x${op.toString(16)}`);
    const ahs = bhs[4] * 4;
    assert.equal(ahs, 0, 'the target sends no AHS');
    const dlen = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7];
    let p = off + 48;
    if (digests && hd) {
      assert.ok(p + 4 <= bytes.length, 'partial header digest');
      assert.equal(bytes.readUInt32LE(p), crc(bhs), `bad header digest from the target on opcode 0x${op.toString(16)}`);
      p += 4;
    }
    const padded = dlen + pad4(dlen);
    assert.ok(p + padded <= bytes.length, 'partial data segment');
    const data = bytes.subarray(p, p + padded);
    p += padded;
    if (digests && dd && dlen) {
      assert.ok(p + 4 <= bytes.length, 'partial data digest');
      assert.equal(bytes.readUInt32LE(p), crc(data), 'bad data digest from the target');
      p += 4;
    }
    if (op === 0x3f) rejects++;
    sentOpcodes.set(op, (sentOpcodes.get(op) ?? 0) + 1);
    if (op === 0x23 && (bhs[1] & 0x80) && (bhs[1] & 3) === 3 && bhs[36] === 0) {
      loggedIn = true;
      digests = true; // from the next PDU on
    }
    pdus++;
    off = p;
  }
  return { pdus, rejects, loggedIn };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

test('a whole connection in-process (reader → login → session → SCSI target): mutated login and full-feature streams never cause an internal error, and the target only sends well-formed PDUs', { timeout: timeoutFor('iscsi/connection', 30) }, async (t) => {
  const f = fuzzing(t, 'iscsi/connection', { timeLimitMs: 25_000 });
  const logs = new LogCapture();
  const logger = pino({ level: 'error' }, logs);
  const h = await harness({ sizeBytes: 1024 * 1024, extra: { logger } });
  const target: TargetEntry = { name: CONN_TARGET, auth: {}, scsi: h.target };
  const dir: TargetDirectory = { targets: () => [target], lookup: (n) => (n === CONN_TARGET ? target : undefined) };
  const server = new IscsiServer({ directory: dir, logger, nopIntervalMs: 0, loginTimeoutMs: 600_000 });
  const accept = (s: FakeSocket) => (server as unknown as { accept(s: net.Socket): void }).accept(s as unknown as net.Socket);
  let loggedIn = 0;
  let rejects = 0;
  let targetPdus = 0;
  await fc.assert(
    fc.asyncProperty(scenarioArb, async (s) => {
      f.hit();
      logs.clear();
      const login = loginBytes(s);
      const ffp = Buffer.concat(s.ffp);
      let stream: Buffer;
      if (s.target === 'login') stream = Buffer.concat([mutate(login, s.mutations), ffp]);
      else if (s.target === 'ffp') stream = Buffer.concat([login, mutate(ffp, s.mutations)]);
      else stream = Buffer.concat([login, ffp]);
      const sock = new FakeSocket();
      accept(sock);
      const conn = [...(server as unknown as { connections: Set<Connection> }).connections].pop();
      assert.ok(conn, 'the server took the connection');
      // Every data segment the target sends fits the initiator's MaxRecvDataSegmentLength in force at that moment.
      const overLimit: string[] = [];
      const send = conn.send.bind(conn);
      conn.send = (bhs, data, onSent) => {
        const limit = conn.session ? conn.session.params.initiatorMaxRecvDataSegmentLength : TARGET_LIMITS.loginMaxDataSegment;
        if (data && data.length > limit) overLimit.push(`opcode 0x${(bhs[0] & 0x3f).toString(16)} with ${data.length} bytes, limit ${limit}`);
        send(bhs, data, onSent);
      };
      for (const c of split(stream, s.cuts)) {
        if (sock.destroyed) break;
        sock.emit('data', c);
        if (s.yieldBetweenChunks) await tick();
      }
      // Let the SCSI commands complete and their responses go out.
      let quiet = 0;
      for (let i = 0; i < 200 && quiet < 3; i++) {
        const before = sock.out.length;
        await tick();
        quiet = sock.out.length === before ? quiet + 1 : 0;
      }
      sock.destroy();
      for (let i = 0; i < 5; i++) await tick();
      const errors = logs.errors();
      assert.deepEqual(errors, [], `error-level log (an untyped exception inside the target): ${JSON.stringify(errors).slice(0, 2000)}`);
      assert.deepEqual(overLimit, [], 'data segments over the initiator\'s MaxRecvDataSegmentLength');
      const out = checkTargetOutput(Buffer.concat(sock.out), conn.session?.params);
      if (out.loggedIn) loggedIn++;
      rejects += out.rejects;
      targetPdus += out.pdus;
      assert.equal(server.stats().connections, 0, 'the connection is gone once the socket closed');
    }),
    f.params,
  );
  const byOp = [...sentOpcodes].sort(([a], [b]) => a - b).map(([op, n]) => `0x${op.toString(16)} ${n}`).join(', ');
  f.report(`${loggedIn} reached full feature phase, target sent ${targetPdus} PDUs (${rejects} Rejects; by opcode ${byOp})`);
  await h.target.close();
  rmSync(h.stateDir, { recursive: true, force: true });
});
