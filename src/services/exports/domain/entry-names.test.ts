import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EntryNamer, isSafeEntryName, safeSegment, truncateUtf8 } from './entry-names.ts';

describe('zip entry names', () => {
  it('makes hostile segments safe', () => {
    assert.equal(safeSegment('..'), '__');
    assert.equal(safeSegment('.'), '_');
    assert.equal(safeSegment(''), '_');
    assert.equal(safeSegment('a/b\\c'), 'a_b_c');
    assert.equal(safeSegment('tab\there\u0001\u007f\u0085'), 'tab_here___');
    assert.equal(safeSegment('con:tro"l?*<>|'), 'con_tro_l_____');
    assert.equal(safeSegment('trailing. '), 'trailing__');
    assert.equal(safeSegment('e\u0301'), '\u00e9', 'NFC');
    assert.equal(safeSegment('\u202eevil'), '_evil', 'no bidi override');
    const long = 'é'.repeat(200);
    assert.equal(Buffer.byteLength(safeSegment(long), 'utf8'), 254, 'cut at a character boundary under 255 bytes');
    assert.equal(truncateUtf8('aé', 2), 'a');
  });

  it('gives unique names, ignoring case, with deterministic suffixes before the extension', () => {
    const namer = new EntryNamer('files');
    assert.equal(namer.file('/', 'report.pdf'), 'files/report.pdf');
    assert.equal(namer.file('/', 'Report.pdf'), 'files/Report (2).pdf');
    assert.equal(namer.file('/a:b', 'x'), 'files/a_b/x');
    assert.equal(namer.file('/a_b', 'x'), 'files/a_b (2)/x', 'two folders that collide after sanitizing stay apart');
    assert.equal(namer.file('/a:b', 'y'), 'files/a_b/y', 'a folder maps to one zip folder');
    assert.equal(namer.file('/', 'a_b'), 'files/a_b (3)', 'a file never takes a folder name');
    assert.equal(namer.file('/', 'noext'), 'files/noext');
    assert.equal(namer.file('/', 'NOEXT'), 'files/NOEXT (2)');
  });

  it('keeps long names within 255 bytes with their suffix, and every name safe', () => {
    const namer = new EntryNamer('files');
    const name = `${'x'.repeat(251)}.txt`;
    const first = namer.file('/', name);
    const second = namer.file('/', name);
    assert.notEqual(first, second);
    assert.ok(second.endsWith(' (2).txt'));
    for (const entry of [first, second, namer.file('/../..', '..'), namer.file('/\u0000', '\u0001')]) {
      assert.ok(isSafeEntryName(entry), entry);
    }
    assert.equal(isSafeEntryName('/abs'), false);
    assert.equal(isSafeEntryName('a/../b'), false);
  });

  it('names a file\'s versions folder apart from other files', () => {
    const namer = new EntryNamer('versions');
    assert.equal(namer.folderFor('/docs', 'a.txt'), 'versions/docs/a.txt');
    assert.equal(namer.folderFor('/docs', 'A.TXT'), 'versions/docs/A (2).TXT');
  });
});
