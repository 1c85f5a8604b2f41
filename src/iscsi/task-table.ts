/**
 * A session's tasks by initiator task tag: an open-addressing hash table of fixed capacity
 * (linear probing, deletion by backward shift), so that adding and removing a task allocates
 * nothing.
 *
 * Why not a Map: a Map grows and shrinks its backing table as tasks come and go, and every
 * table it replaces keeps a link to its successor. Once a full collection has moved a live table
 * to the old generation, that dead old table keeps the next one alive through every young
 * collection, and so on down the chain, with all the tasks they hold: every command's objects
 * were promoted until the next full collection, which moved the then-live table and started it
 * again. A write-heavy session spent about a sixth more time that way.
 */
/**
 * A tag's home slot in a table of 2^(32 - shift) slots (Fibonacci hashing: tags are often
 * consecutive). Exported for the tests, which pick tags that collide.
 */
export function homeSlot(tag: number, shift: number): number {
  return Math.imul(tag, 0x9e3779b1) >>> shift;
}

export class TaskTable<T> {
  private readonly tags: Uint32Array;
  private readonly tasks: (T | undefined)[];
  private readonly mask: number;
  private readonly shift: number;
  private count = 0;

  /** Room for `capacity` tasks (a session refuses more before adding them). */
  constructor(readonly capacity: number) {
    let bits = 1;
    while (1 << bits < capacity * 2) bits++;
    this.tags = new Uint32Array(1 << bits);
    this.tasks = new Array<T | undefined>(1 << bits).fill(undefined);
    this.mask = (1 << bits) - 1;
    this.shift = 32 - bits;
  }

  get size(): number {
    return this.count;
  }

  private home(tag: number): number {
    return homeSlot(tag, this.shift);
  }

  /** The slot holding `tag`, or -1. */
  private find(tag: number): number {
    for (let i = this.home(tag); this.tasks[i] !== undefined; i = (i + 1) & this.mask) {
      if (this.tags[i] === tag >>> 0) return i;
    }
    return -1;
  }

  has(tag: number): boolean {
    return this.find(tag) >= 0;
  }

  get(tag: number): T | undefined {
    const i = this.find(tag);
    return i < 0 ? undefined : this.tasks[i];
  }

  /** Add or replace; throws when full (a session checks its limit first). */
  set(tag: number, task: T): void {
    let i = this.home(tag);
    for (; this.tasks[i] !== undefined; i = (i + 1) & this.mask) {
      if (this.tags[i] === tag >>> 0) {
        this.tasks[i] = task;
        return;
      }
    }
    if (this.count >= this.capacity) throw new RangeError(`task table full (${this.capacity} tasks)`);
    this.tags[i] = tag;
    this.tasks[i] = task;
    this.count++;
  }

  delete(tag: number): boolean {
    let i = this.find(tag);
    if (i < 0) return false;
    // Move back each later entry of the run that may sit in the freed slot (its home is not
    // cyclically within (i, j]), so that every lookup still finds its entry before an empty slot.
    for (let j = (i + 1) & this.mask; this.tasks[j] !== undefined; j = (j + 1) & this.mask) {
      const h = this.home(this.tags[j]);
      const stays = i <= j ? i < h && h <= j : i < h || h <= j;
      if (stays) continue;
      this.tags[i] = this.tags[j];
      this.tasks[i] = this.tasks[j];
      i = j;
    }
    this.tasks[i] = undefined;
    this.count--;
    return true;
  }

  /** The tasks, in no particular order (a copy: the table may change while the caller walks it). */
  values(): T[] {
    const out: T[] = [];
    for (const t of this.tasks) if (t !== undefined) out.push(t);
    return out;
  }
}
