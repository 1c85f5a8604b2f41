/**
 * Text keys and operational parameter negotiation (RFC 7143 §6.2, §13): the text codec, and
 * every operational key the target knows — list (digests), declarative
 * (MaxRecvDataSegmentLength), numeric Minimum/Maximum with their ranges, boolean AND/OR —
 * plus unknown keys (NotUnderstood) and malformed or out-of-range values (Reject, parameter
 * unchanged). Expected answers come from the RFC's result functions, not from the code.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import fc from 'fast-check';
import { IscsiError, IscsiErrorCode } from '../../src/iscsi/errors';
import { defaultOffer, negotiate, parseNumber, rfcDefaults, targetDeclarations, type SessionParams, type TargetOffer } from '../../src/iscsi/negotiation';
import { encodeText, parseText, type TextPairs } from '../../src/iscsi/text';

const RUNS = Number(process.env.FC_RUNS ?? 200);
const MAX24 = 2 ** 24 - 1;

/** Negotiate one batch from fresh RFC defaults; returns the answers as a map and the params. */
function run(pairs: TextPairs, offer: TargetOffer = defaultOffer(), params: SessionParams = rfcDefaults()): { answers: Map<string, string>; list: TextPairs; params: SessionParams } {
  const out = negotiate(pairs, offer, params);
  return { answers: new Map(out.answers), list: out.answers, params };
}

// ---- The text codec (§6.1) -----------------------------------------------------------------------

const keyName = fc.stringMatching(/^[A-Za-z][A-Za-z0-9.\-+@_:]{0,40}$/);
const value = fc.string({ unit: 'grapheme', maxLength: 100 }).filter((s) => !s.includes('\0'));

test('text keys round-trip through encodeText/parseText, in order, UTF-8 values included', () => {
  fc.assert(
    fc.property(fc.uniqueArray(fc.tuple(keyName, value), { selector: ([k]) => k, maxLength: 12 }), (pairs) => {
      const encoded = encodeText(pairs);
      // Each pair is key=value followed by one NUL (§6.1).
      assert.equal(encoded.filter((b) => b === 0).length, pairs.length);
      assert.deepEqual(parseText(encoded), pairs);
    }),
    { numRuns: RUNS },
  );
});

test('malformed text is an ISCSI_TEXT error: no trailing NUL, no "=", bad key name, repeated key, value too long', () => {
  const bad: Array<[string, Buffer]> = [
    ['no trailing NUL', Buffer.from('HeaderDigest=None')],
    ['no "="', Buffer.from('HeaderDigest\0')],
    ['empty key', Buffer.from('=None\0')],
    ['space in key', Buffer.from('Header Digest=None\0')],
    ['key longer than 63', Buffer.from(`${'K'.repeat(64)}=1\0`)],
    ['repeated key', Buffer.from('MaxBurstLength=512\0MaxBurstLength=1024\0')],
    ['value longer than 8192', Buffer.from(`TargetAlias=${'v'.repeat(8193)}\0`)],
  ];
  for (const [why, data] of bad) {
    assert.throws(() => parseText(data), (e: unknown) => e instanceof IscsiError && e.code === IscsiErrorCode.Text, why);
  }
  assert.deepEqual(parseText(Buffer.alloc(0)), []);
  assert.deepEqual(parseText(Buffer.from('A=\0\0B=x=y\0')), [['A', ''], ['B', 'x=y']], 'empty value, stray NUL, "=" inside a value');
});

test('numbers: decimal and 0x hex; anything else is malformed', () => {
  assert.equal(parseNumber('0'), 0);
  assert.equal(parseNumber('262144'), 262144);
  assert.equal(parseNumber('0x2000'), 8192);
  assert.equal(parseNumber('0XfFfF'), 65535);
  for (const v of ['', ' 1', '1 ', '-1', '+1', '1e3', '0x', '0x123456789', '12345678901', 'Yes', '1.5']) assert.equal(parseNumber(v), undefined, JSON.stringify(v));
});

// ---- Every key (§13) -------------------------------------------------------------------------------

test('HeaderDigest and DataDigest: the first of the initiator\'s choices the target accepts; none acceptable → Reject', () => {
  for (const key of ['HeaderDigest', 'DataDigest'] as const) {
    const field = key === 'HeaderDigest' ? 'headerDigest' : 'dataDigest';
    const cases: Array<[string, readonly ('CRC32C' | 'None')[], string, boolean]> = [
      ['CRC32C,None', ['CRC32C', 'None'], 'CRC32C', true],
      ['None,CRC32C', ['CRC32C', 'None'], 'None', false],
      ['CRC32C', ['CRC32C', 'None'], 'CRC32C', true],
      ['None', ['CRC32C', 'None'], 'None', false],
      ['CRC32C,None', ['None'], 'None', false], // a target that does not do digests
      ['None,CRC32C', ['CRC32C'], 'CRC32C', true], // a target that requires them
      ['CRC32C', ['None'], 'Reject', false],
      ['MD5,SHA1', ['CRC32C', 'None'], 'Reject', false],
      ['crc32c', ['CRC32C', 'None'], 'Reject', false], // values are case-sensitive
    ];
    for (const [offered, digests, answer, on] of cases) {
      const r = run([[key, offered]], { ...defaultOffer(), digests });
      assert.equal(r.answers.get(key), answer, `${key}=${offered} with target ${digests.join(',')}`);
      assert.equal(r.params[field], on);
    }
  }
});

test('MaxRecvDataSegmentLength is declarative: the target records the initiator\'s value and answers its own (512..2^24-1)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 512, max: MAX24 }), fc.integer({ min: 512, max: MAX24 }), fc.boolean(), (theirs, ours, asHex) => {
      const r = run([['MaxRecvDataSegmentLength', asHex ? `0x${theirs.toString(16)}` : String(theirs)]], { ...defaultOffer(), maxRecvDataSegmentLength: ours });
      assert.equal(r.answers.get('MaxRecvDataSegmentLength'), String(ours));
      assert.equal(r.params.initiatorMaxRecvDataSegmentLength, theirs);
    }),
    { numRuns: RUNS },
  );
  for (const v of ['511', '0', String(MAX24 + 1), 'lots', '']) {
    const r = run([['MaxRecvDataSegmentLength', v]]);
    assert.equal(r.answers.get('MaxRecvDataSegmentLength'), 'Reject', v);
    assert.equal(r.params.initiatorMaxRecvDataSegmentLength, 8192, 'the RFC default stays');
  }
});

/** Numeric keys: [key, result function, lo, hi, the target's value in defaultOffer(), params field]. */
const NUMERIC: Array<[string, 'min' | 'max', number, number, number, keyof SessionParams]> = [
  ['MaxBurstLength', 'min', 512, MAX24, defaultOffer().maxBurstLength, 'maxBurstLength'],
  ['FirstBurstLength', 'min', 512, MAX24, defaultOffer().firstBurstLength, 'firstBurstLength'],
  ['MaxOutstandingR2T', 'min', 1, 65535, defaultOffer().maxOutstandingR2T, 'maxOutstandingR2T'],
  ['DefaultTime2Wait', 'max', 0, 3600, defaultOffer().defaultTime2Wait, 'defaultTime2Wait'],
  ['DefaultTime2Retain', 'min', 0, 3600, defaultOffer().defaultTime2Retain, 'defaultTime2Retain'],
  ['ErrorRecoveryLevel', 'min', 0, 2, 0, 'errorRecoveryLevel'],
  ['MaxConnections', 'min', 1, 65535, 1, 'maxConnections'],
];

test('numeric keys answer with their result function (Minimum or Maximum) and the result applies to the session', () => {
  for (const [key, fn, lo, hi, ours, field] of NUMERIC) {
    fc.assert(
      fc.property(fc.integer({ min: lo, max: hi }), (n) => {
        // FirstBurstLength alone: MaxBurstLength stays at the RFC default, which also bounds it.
        const params = rfcDefaults();
        params.maxBurstLength = MAX24;
        const r = run([[key, String(n)]], defaultOffer(), params);
        const expected = fn === 'min' ? Math.min(n, ours) : Math.max(n, ours);
        assert.equal(r.answers.get(key), String(expected), `${key}=${n}`);
        assert.equal(r.params[field], expected);
        assert.ok(expected >= lo && expected <= hi, 'the answer is inside the key\'s range');
      }),
      { numRuns: Math.ceil(RUNS / 4) },
    );
  }
});

test('numeric keys out of range or malformed get Reject and leave the parameter at its value', () => {
  for (const [key, , lo, hi, , field] of NUMERIC) {
    const bad = [String(hi + 1), 'ten', '', '0x', '1.0', '-1'];
    if (lo > 0) bad.push(String(lo - 1));
    for (const v of bad) {
      const before = rfcDefaults();
      const r = run([[key, v]]);
      assert.equal(r.answers.get(key), 'Reject', `${key}=${v}`);
      assert.deepEqual(r.params[field], before[field], `${key} unchanged after ${v}`);
    }
  }
});

test('FirstBurstLength never exceeds MaxBurstLength, in the answers and in the session (§13.14)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 512, max: MAX24 }), fc.integer({ min: 512, max: MAX24 }), fc.boolean(), (maxBurst, firstBurst, firstBurstFirst) => {
      const pairs: TextPairs = [['MaxBurstLength', String(maxBurst)], ['FirstBurstLength', String(firstBurst)]];
      if (firstBurstFirst) pairs.reverse();
      const r = run(pairs);
      const answeredMax = Number(r.answers.get('MaxBurstLength'));
      const answeredFirst = Number(r.answers.get('FirstBurstLength'));
      assert.ok(answeredFirst <= answeredMax, `answered FirstBurstLength ${answeredFirst} > MaxBurstLength ${answeredMax}`);
      assert.ok(answeredFirst <= firstBurst && answeredMax <= maxBurst, 'Minimum: never more than offered');
      // What the initiator is told is what the target enforces.
      assert.equal(r.params.maxBurstLength, answeredMax);
      assert.equal(r.params.firstBurstLength, answeredFirst);
    }),
    { numRuns: RUNS },
  );
  // Only MaxBurstLength offered, below the FirstBurstLength default (65536): the session clamps it.
  const r = run([['MaxBurstLength', '4096']]);
  assert.equal(r.params.maxBurstLength, 4096);
  assert.ok(r.params.firstBurstLength <= 4096);
});

test('ImmediateData is AND, InitialR2T/DataPDUInOrder/DataSequenceInOrder are OR; anything but Yes/No is Reject', () => {
  const yn = (b: boolean) => (b ? 'Yes' : 'No');
  for (const theirs of [true, false]) {
    for (const ours of [true, false]) {
      const offer = { ...defaultOffer(), immediateData: ours, initialR2T: ours };
      const r = run([['ImmediateData', yn(theirs)], ['InitialR2T', yn(theirs)]], offer);
      assert.equal(r.answers.get('ImmediateData'), yn(theirs && ours), `ImmediateData ${yn(theirs)} AND ${yn(ours)}`);
      assert.equal(r.params.immediateData, theirs && ours);
      assert.equal(r.answers.get('InitialR2T'), yn(theirs || ours), `InitialR2T ${yn(theirs)} OR ${yn(ours)}`);
      assert.equal(r.params.initialR2T, theirs || ours);
    }
    // The target wants data in order (its own value is Yes), so OR gives Yes whatever is offered.
    const r = run([['DataPDUInOrder', yn(theirs)], ['DataSequenceInOrder', yn(theirs)]]);
    assert.equal(r.answers.get('DataPDUInOrder'), 'Yes');
    assert.equal(r.answers.get('DataSequenceInOrder'), 'Yes');
    assert.equal(r.params.dataPduInOrder, true);
    assert.equal(r.params.dataSequenceInOrder, true);
  }
  for (const key of ['ImmediateData', 'InitialR2T', 'DataPDUInOrder', 'DataSequenceInOrder']) {
    for (const v of ['yes', 'YES', 'true', '1', '', 'Yes,No']) {
      const before = rfcDefaults();
      const r = run([[key, v]], { ...defaultOffer(), immediateData: false, initialR2T: false });
      assert.equal(r.answers.get(key), 'Reject', `${key}=${v}`);
      assert.deepEqual(r.params, before, 'nothing changes');
    }
  }
});

test('obsolete markers are off, their intervals Irrelevant; RFC 7144 keys', () => {
  const r = run([['IFMarker', 'Yes'], ['OFMarker', 'No'], ['IFMarkInt', '1~65535'], ['OFMarkInt', '2048'], ['TaskReporting', 'ResponseFence,RFC3720'], ['iSCSIProtocolLevel', '2']]);
  assert.deepEqual(r.list, [['IFMarker', 'No'], ['OFMarker', 'No'], ['IFMarkInt', 'Irrelevant'], ['OFMarkInt', 'Irrelevant'], ['TaskReporting', 'RFC3720'], ['iSCSIProtocolLevel', '1']]);
  assert.equal(run([['TaskReporting', 'FastAbort']]).answers.get('TaskReporting'), 'Reject');
  assert.equal(run([['iSCSIProtocolLevel', '0']]).answers.get('iSCSIProtocolLevel'), '0');
  assert.equal(run([['iSCSIProtocolLevel', '32']]).answers.get('iSCSIProtocolLevel'), 'Reject');
});

test('unknown keys are answered NotUnderstood and change nothing; answers keep the order received', () => {
  fc.assert(
    fc.property(fc.uniqueArray(fc.tuple(keyName.map((k) => `X-com.example.${k}`), value), { selector: ([k]) => k, maxLength: 6 }), (unknown) => {
      const pairs: TextPairs = [['MaxBurstLength', '8192'], ...unknown, ['ImmediateData', 'No']];
      const r = run(pairs);
      assert.deepEqual(r.list.map(([k]) => k), pairs.map(([k]) => k));
      for (const [k] of unknown) assert.equal(r.answers.get(k), 'NotUnderstood');
      const expected = rfcDefaults();
      expected.maxBurstLength = 8192;
      expected.firstBurstLength = 8192;
      expected.immediateData = false;
      assert.deepEqual(r.params, expected);
    }),
    { numRuns: Math.ceil(RUNS / 4) },
  );
  for (const k of ['Foo', 'maxburstlength', 'AuthMethodX', 'SendTargets2']) assert.equal(run([[k, '1']]).answers.get(k), 'NotUnderstood', k);
});

test('every RFC 7143 operational key offered at once: one answer each, a consistent session', () => {
  const offered: TextPairs = [
    ['HeaderDigest', 'CRC32C,None'],
    ['DataDigest', 'CRC32C,None'],
    ['MaxRecvDataSegmentLength', '131072'],
    ['MaxBurstLength', '1048576'],
    ['FirstBurstLength', '131072'],
    ['ImmediateData', 'Yes'],
    ['InitialR2T', 'No'],
    ['MaxOutstandingR2T', '8'],
    ['DataPDUInOrder', 'Yes'],
    ['DataSequenceInOrder', 'Yes'],
    ['DefaultTime2Wait', '0'],
    ['DefaultTime2Retain', '60'],
    ['ErrorRecoveryLevel', '2'],
    ['MaxConnections', '4'],
  ];
  const offer = defaultOffer();
  const r = run(offered, offer);
  assert.deepEqual(r.list, [
    ['HeaderDigest', 'CRC32C'],
    ['DataDigest', 'CRC32C'],
    ['MaxRecvDataSegmentLength', String(offer.maxRecvDataSegmentLength)],
    ['MaxBurstLength', '1048576'],
    ['FirstBurstLength', String(Math.min(131072, offer.firstBurstLength))],
    ['ImmediateData', 'Yes'],
    ['InitialR2T', 'No'],
    ['MaxOutstandingR2T', String(Math.min(8, offer.maxOutstandingR2T))],
    ['DataPDUInOrder', 'Yes'],
    ['DataSequenceInOrder', 'Yes'],
    ['DefaultTime2Wait', String(Math.max(0, offer.defaultTime2Wait))],
    ['DefaultTime2Retain', String(Math.min(60, offer.defaultTime2Retain))],
    ['ErrorRecoveryLevel', '0'],
    ['MaxConnections', '1'],
  ]);
  assert.deepEqual(r.params, {
    headerDigest: true,
    dataDigest: true,
    initiatorMaxRecvDataSegmentLength: 131072,
    targetMaxRecvDataSegmentLength: rfcDefaults().targetMaxRecvDataSegmentLength,
    maxBurstLength: 1048576,
    firstBurstLength: Math.min(131072, offer.firstBurstLength),
    immediateData: true,
    initialR2T: false,
    maxOutstandingR2T: Math.min(8, offer.maxOutstandingR2T),
    dataPduInOrder: true,
    dataSequenceInOrder: true,
    defaultTime2Wait: Math.max(0, offer.defaultTime2Wait),
    defaultTime2Retain: Math.min(60, offer.defaultTime2Retain),
    errorRecoveryLevel: 0,
    maxConnections: 1,
  });
});

test('the target declares its MaxRecvDataSegmentLength unless it already answered it', () => {
  const offer = { ...defaultOffer(), maxRecvDataSegmentLength: 65536 };
  const params = rfcDefaults();
  assert.deepEqual(targetDeclarations(new Set(), offer, params, false), [['MaxRecvDataSegmentLength', '65536']]);
  assert.equal(params.targetMaxRecvDataSegmentLength, 65536);
  assert.deepEqual(targetDeclarations(new Set(['MaxRecvDataSegmentLength']), offer, rfcDefaults(), false), []);
});
