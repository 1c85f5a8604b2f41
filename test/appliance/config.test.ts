/**
 * resolveConfig: the order file < flags < environment holds for every setting (the switch
 * --insecure-link included), and an error about a value names it as the operator wrote it: the
 * file's field path, the flag, or the environment variable.
 */
import assert from 'node:assert/strict';
import test from 'node:test';
import { ConfigError } from '../../src/common/errors';
import { resolveConfig, type ConfigFile, type ConfigFlags } from '../../src/appliance/config';

const base: ConfigFile = { data: '/tmp/offsite-config-test', replication: { replicateTo: '127.0.0.1:7000' } };

test('OFFSITE_INSECURE_LINK overrides --insecure-link and the file, either way', () => {
  const flag: ConfigFlags = { insecureLink: true };
  const key = { replication: { ...base.replication, linkKey: '/nonexistent/link.key' } };
  // The flag alone: plain link.
  assert.equal(resolveConfig(base, flag, {}).replication.insecureLink, true);
  // The environment says no: it wins over the flag (and the link key then applies).
  assert.equal(resolveConfig({ ...base, ...key }, flag, { OFFSITE_INSECURE_LINK: 'false' }).replication.insecureLink, false);
  assert.equal(resolveConfig({ ...base, ...key }, flag, { OFFSITE_INSECURE_LINK: '0' }).replication.insecureLink, false);
  // ... and without a key, that is the missing-key error, not a plain link.
  assert.throws(() => resolveConfig(base, flag, { OFFSITE_INSECURE_LINK: 'no' }), /link-key: the replication link is authenticated/);
  // The environment says yes over a file that says no.
  assert.equal(resolveConfig({ ...base, replication: { ...base.replication, insecureLink: false } }, {}, { OFFSITE_INSECURE_LINK: 'yes' }).replication.insecureLink, true);
  // The flag over the file; an empty variable counts as not set.
  assert.equal(resolveConfig({ ...base, replication: { ...base.replication, insecureLink: false } }, flag, { OFFSITE_INSECURE_LINK: '' }).replication.insecureLink, true);
  // A value that is neither is an error naming the variable.
  assert.throws(() => resolveConfig(base, flag, { OFFSITE_INSECURE_LINK: 'maybe' }), (e: unknown) => e instanceof ConfigError && /^OFFSITE_INSECURE_LINK: 'maybe'/.test(e.message));
});

test('a bad value is reported under the name it was given by: file field path, flag, or environment variable', () => {
  const cases: [ConfigFile, ConfigFlags, NodeJS.ProcessEnv, RegExp][] = [
    [{ ...base, journal: { max: 'lots' } }, {}, {}, /^journal\.max: 'lots' is not a size/],
    [base, { journalMax: 'lots' }, {}, /^--journal-max: 'lots' is not a size/],
    [base, {}, { OFFSITE_JOURNAL_MAX: 'lots' }, /^OFFSITE_JOURNAL_MAX: 'lots' is not a size/],
    [{ ...base, journal: { retain: 'ages' } }, {}, {}, /^journal\.retain: 'ages' is not a duration/],
    [{ ...base, replication: { ...base.replication, maxBandwidth: 'fast' } }, {}, {}, /^replication\.maxBandwidth: 'fast' is not a rate/],
    [base, { maxBandwidth: 'fast' }, {}, /^--max-bandwidth: 'fast' is not a rate/],
    [base, {}, { OFFSITE_MAX_BANDWIDTH: 'fast' }, /^OFFSITE_MAX_BANDWIDTH: 'fast' is not a rate/],
    [{ ...base, replication: { ...base.replication, rpoTarget: 'soon' } }, {}, {}, /^replication\.rpoTarget: 'soon' is not a duration/],
    [{ ...base, replication: { replicateTo: 'nowhere' } }, {}, {}, /^replication\.replicateTo: 'nowhere' is not HOST:PORT/],
    [{ ...base, iscsi: 'nowhere' }, {}, {}, /^iscsi: 'nowhere' is not HOST:PORT/],
    [base, { iscsi: 'nowhere' }, {}, /^--iscsi: 'nowhere' is not HOST:PORT/],
    [{ ...base, nop: { timeout: 'never' } }, {}, {}, /^nop\.timeout: 'never' is not a duration/],
    [{ ...base, witness: { address: 'nowhere' } }, {}, {}, /^witness\.address: 'nowhere' is not HOST:PORT/],
    [base, { rpoPolicy: 'panic' }, {}, /^--rpo-policy: 'panic' must be coalesce, throttle or alert/],
    [base, {}, { OFFSITE_ROLE: 'boss' }, /^OFFSITE_ROLE: 'boss' must be primary or replica/],
    // The file's value is overridden by the flag: the flag is what is wrong.
    [{ ...base, journal: { max: '1G' } }, { journalMax: 'lots' }, {}, /^--journal-max: /],
  ];
  for (const [file, flags, env, pattern] of cases) {
    assert.throws(() => resolveConfig({ ...file, replication: { ...file.replication, insecureLink: true } }, flags, env), (e: unknown) => {
      assert.ok(e instanceof ConfigError, String(e));
      assert.match(e.message, pattern);
      return true;
    });
  }
});
