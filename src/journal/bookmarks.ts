/**
 * Bookmarks: named points of the history (offsite bookmark NAME), e.g. taken while an
 * application was quiesced, so that recovery can go back to a state the application itself
 * left consistent, by name. A bookmark names the sequence number of the last write acknowledged
 * before it was taken. The primary numbers them (`id`) and ships them to the replica beside the
 * records; both keep them in their journal's LevelDB ('k' keys), at most MAX_BOOKMARKS, the
 * oldest going first. A bookmark outlives the records it names only as a name: past the
 * retained window it can no longer be gone back to.
 */
import { JournalError, JournalErrorCode } from './wal-errors';
import type { Journal } from './wal';

export interface Bookmark {
  id: number;
  name: string;
  seq: number;
  timeMs: number;
}

export const BOOKMARK_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$/;
export const MAX_BOOKMARKS = 1000;

/** A bookmark as received (from the admin API or the link): checked field by field. */
export function isBookmark(v: unknown): v is Bookmark {
  const b = v as Partial<Bookmark> | null;
  return (
    typeof b === 'object' && b !== null &&
    typeof b.name === 'string' && BOOKMARK_NAME_RE.test(b.name) &&
    Number.isSafeInteger(b.id) && b.id! > 0 &&
    Number.isSafeInteger(b.seq) && b.seq! >= 0 &&
    typeof b.timeMs === 'number' && Number.isFinite(b.timeMs) && b.timeMs >= 0
  );
}

export class Bookmarks {
  /** By sequence number, then id. */
  private list: Bookmark[] = [];
  private topId = 0;
  /** Changes run one at a time: each checks the list, awaits its synced write, then changes the list. */
  private changing: Promise<unknown> = Promise.resolve();

  private constructor(private readonly journal: Journal) {}

  static async load(journal: Journal): Promise<Bookmarks> {
    const b = new Bookmarks(journal);
    for await (const [name, v] of journal.namedEntries()) {
      try {
        const parsed = { ...(JSON.parse(v.toString('utf8')) as Omit<Bookmark, 'name'>), name };
        if (isBookmark(parsed)) b.list.push(parsed);
      } catch {
        // A damaged entry names nothing: skipped.
      }
    }
    b.sort();
    for (const x of b.list) b.topId = Math.max(b.topId, x.id);
    return b;
  }

  private sort(): void {
    this.list.sort((a, b) => a.seq - b.seq || a.id - b.id);
  }

  all(): readonly Bookmark[] {
    return this.list;
  }

  get(name: string): Bookmark | undefined {
    return this.list.find((b) => b.name === name);
  }

  /** Highest id held. */
  lastId(): number {
    return this.topId;
  }

  /** Bookmarks with id > afterId, by id (what a replica has not confirmed yet). */
  after(afterId: number, limit = 100): Bookmark[] {
    return this.list.filter((b) => b.id > afterId).sort((a, b) => a.id - b.id).slice(0, limit);
  }

  /** The first bookmarked sequence number > seq (a coalesced batch must end there). */
  nextAfter(seq: number): number | undefined {
    for (const b of this.list) if (b.seq > seq) return b.seq;
    return undefined;
  }

  /**
   * Take one (primary: a new id) or keep one received (replica: its id). The same name for the
   * same point again changes nothing; for another point it is refused.
   */
  add(b: Omit<Bookmark, 'id'> & { id?: number }): Promise<Bookmark> {
    return this.serial(() => this.addNow(b));
  }

  private serial<T>(change: () => Promise<T>): Promise<T> {
    const p = this.changing.then(change, change);
    this.changing = p.catch(() => undefined);
    return p;
  }

  private async addNow(b: Omit<Bookmark, 'id'> & { id?: number }): Promise<Bookmark> {
    if (!BOOKMARK_NAME_RE.test(b.name)) throw new JournalError(JournalErrorCode.BadBookmark, `bookmark name '${b.name}': use 1-64 characters A-Z, a-z, 0-9, '.', '_', ':', '@', '+', '-', starting with a letter or digit`);
    const have = this.get(b.name);
    if (have) {
      if (have.seq === b.seq) return have;
      throw new JournalError(JournalErrorCode.BookmarkExists, `bookmark '${b.name}' already names sequence ${have.seq} (${new Date(have.timeMs).toISOString()}); choose another name`);
    }
    const full: Bookmark = { id: b.id ?? this.topId + 1, name: b.name, seq: b.seq, timeMs: b.timeMs };
    await this.journal.putNamed(full.name, Buffer.from(JSON.stringify({ id: full.id, seq: full.seq, timeMs: full.timeMs })));
    this.list.push(full);
    this.sort();
    this.topId = Math.max(this.topId, full.id);
    while (this.list.length > MAX_BOOKMARKS) await this.remove(this.list[0]);
    return full;
  }

  /** Forget the bookmarks after `seq` (that history was given up: a split, a promotion at an earlier point). */
  dropAfter(seq: number): Promise<Bookmark[]> {
    return this.serial(async () => {
      const gone = this.list.filter((b) => b.seq > seq);
      for (const b of gone) await this.remove(b);
      return gone;
    });
  }

  /** Forget one by name (a primary's bookmark of the same name replaces it). */
  dropNamed(name: string): Promise<void> {
    return this.serial(async () => {
      const b = this.get(name);
      if (b) await this.remove(b);
    });
  }

  private async remove(b: Bookmark): Promise<void> {
    await this.journal.putNamed(b.name);
    this.list = this.list.filter((x) => x !== b);
  }
}
