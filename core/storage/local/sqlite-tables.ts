/**
 * Tables on SQLite: one `items` table keyed by (pk, sk) with the attributes as JSON. SQLite's
 * BINARY collation compares UTF-8 bytes, the order DynamoDB gives sort keys, so range queries
 * and pagination line up with the aws family. Conditions are checked in the same write
 * transaction that applies the change (BEGIN IMMEDIATE), so they hold across processes too.
 */
import type { Statement } from 'better-sqlite3';
import {
  ConditionFailed,
  InvalidRequest,
  type AttrValue,
  type Condition,
  type Item,
  type Key,
  type QueryOptions,
  type QueryPage,
  type SortRange,
  type TableWriteOptions,
  type Tables,
  type TransactOp,
  type Update,
} from '../ports.js';
import type { SqliteStore } from './sqlite.js';

interface Row {
  pk: string;
  sk: string;
  ttl: number | null;
  data: string;
}

const RESERVED = new Set(['pk', 'sk', 'ttl']);
/** DynamoDB's item size limit; kept so that both families accept the same items. */
const MAX_ITEM_BYTES = 400 * 1024;

function checkKey(key: Key): void {
  if (!key || typeof key.pk !== 'string' || typeof key.sk !== 'string' || key.pk === '' || key.sk === '') {
    throw new InvalidRequest('pk and sk must be non-empty strings');
  }
}

function checkTtl(ttl: unknown): void {
  if (ttl !== undefined && ttl !== null && (typeof ttl !== 'number' || !Number.isFinite(ttl))) throw new InvalidRequest('ttl must be epoch seconds');
}

function deepEqual(a: AttrValue | undefined, b: AttrValue | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || a === undefined || b === undefined || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as AttrValue[];
    return a.length === bb.length && a.every((x, i) => deepEqual(x, bb[i]));
  }
  const ao = a as Record<string, AttrValue>;
  const bo = b as Record<string, AttrValue>;
  const ak = Object.keys(ao);
  return ak.length === Object.keys(bo).length && ak.every((k) => Object.hasOwn(bo, k) && deepEqual(ao[k], bo[k]));
}

/** True when `cond` holds for `cur` (undefined: no live item). */
export function conditionHolds(cond: Condition | undefined, cur: Item | undefined): boolean {
  if (!cond) return true;
  if (cond.exists === true && !cur) return false;
  if (cond.exists === false && cur) return false;
  for (const [k, v] of Object.entries(cond.equals ?? {})) {
    const have = cur?.[k];
    if (v === null) {
      if (have !== undefined && have !== null) return false;
    } else if (!deepEqual(have, v)) return false;
  }
  for (const [k, v] of Object.entries(cond.lessThan ?? {})) {
    const have = cur?.[k];
    if (typeof have !== 'number' || !(have < v)) return false;
  }
  for (const [k, v] of Object.entries(cond.greaterThan ?? {})) {
    const have = cur?.[k];
    if (typeof have !== 'number' || !(have > v)) return false;
  }
  return true;
}

/** The smallest string greater than every string that starts with `p` (UTF-8 order), or undefined. */
function prefixEnd(p: string): string | undefined {
  const cps = Array.from(p);
  while (cps.length) {
    const last = cps.pop()!.codePointAt(0)!;
    if (last < 0x10ffff) {
      let next = last + 1;
      if (next >= 0xd800 && next <= 0xdfff) next = 0xe000;
      return cps.join('') + String.fromCodePoint(next);
    }
  }
  return undefined;
}

function encodeCursor(pk: string, sk: string): string {
  return Buffer.from(JSON.stringify([pk, sk]), 'utf8').toString('base64url');
}

function decodeCursor(pk: string, cursor: string): string {
  try {
    const [cpk, sk] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [string, string];
    if (cpk !== pk || typeof sk !== 'string') throw new Error('cursor of another partition');
    return sk;
  } catch (e) {
    throw new InvalidRequest('bad query cursor', { cause: e });
  }
}

/** The local Tables adapter. */
export class SqliteTables implements Tables {
  /** Bounded so that one transaction holds the write lock for milliseconds, not seconds. */
  readonly maxTransactionOps = 1000;
  private readonly getStmt: Statement<[string, string]>;
  private readonly upsertStmt: Statement<[string, string, number | null, string]>;
  private readonly deleteStmt: Statement<[string, string]>;
  private readonly purgeStmt: Statement<[number]>;
  /** Statements whose SQL depends on the call: queries by SQL, in-place updates by shape. */
  private readonly stmts = new Map<string, Statement>();
  private readonly inPlace = new Map<string, Statement>();

  constructor(
    private readonly store: SqliteStore,
    /** Milliseconds since the epoch. */
    private readonly now: () => number,
  ) {
    const db = store.db;
    this.getStmt = db.prepare('SELECT pk, sk, ttl, data FROM items WHERE pk = ? AND sk = ?');
    this.upsertStmt = db.prepare('INSERT OR REPLACE INTO items (pk, sk, ttl, data) VALUES (?, ?, ?, ?)');
    this.deleteStmt = db.prepare('DELETE FROM items WHERE pk = ? AND sk = ?');
    this.purgeStmt = db.prepare('DELETE FROM items WHERE (pk, sk) IN (SELECT pk, sk FROM items WHERE ttl IS NOT NULL AND ttl <= ? LIMIT 1000)');
  }

  private nowSeconds(): number {
    return this.now() / 1000;
  }

  private toItem(row: Row): Item {
    const item = JSON.parse(row.data) as Item;
    item.pk = row.pk;
    item.sk = row.sk;
    if (row.ttl !== null) item.ttl = row.ttl;
    return item;
  }

  /** The live item at key, read inside the current transaction (or autocommit). */
  private current(key: Key): Item | undefined {
    const row = this.getStmt.get(key.pk, key.sk) as Row | undefined;
    if (!row || (row.ttl !== null && row.ttl <= this.nowSeconds())) return undefined;
    return this.toItem(row);
  }

  private write(item: Item): void {
    const data: Record<string, AttrValue> = {};
    for (const [k, v] of Object.entries(item)) if (!RESERVED.has(k) && v !== undefined) data[k] = v;
    const json = JSON.stringify(data);
    if (json.length > MAX_ITEM_BYTES && Buffer.byteLength(json) > MAX_ITEM_BYTES) throw new InvalidRequest(`item larger than ${MAX_ITEM_BYTES} bytes`);
    this.upsertStmt.run(item.pk, item.sk, item.ttl ?? null, json);
  }

  async get(key: Key): Promise<Item | undefined> {
    checkKey(key);
    return this.store.read(() => this.current(key), 'tables.get');
  }

  async put(item: Item, options: TableWriteOptions = {}): Promise<void> {
    checkKey(item);
    checkTtl(item.ttl);
    await this.store.write(() => this.applyPut(item, options.condition, 'put'), { durable: options.durable });
  }

  private applyPut(item: Item, condition: Condition | undefined, what: string): void {
    if (condition && !conditionHolds(condition, this.current(item))) throw new ConditionFailed(`${what} ${item.pk} ${item.sk}`);
    this.write(item);
  }

  async update(key: Key, changes: Update, options: TableWriteOptions = {}): Promise<Item> {
    checkKey(key);
    checkUpdate(changes);
    return this.store.write(() => this.applyUpdate(key, changes, options.condition, 'update'), { durable: options.durable });
  }

  private applyUpdate(key: Key, changes: Update, condition: Condition | undefined, what: string): Item {
    const cur = this.current(key);
    if (condition && !conditionHolds(condition, cur)) throw new ConditionFailed(`${what} ${key.pk} ${key.sk}`);
    return this.applyChanges(key, cur, changes);
  }

  /** Writes `cur` (the live item at `key`, or undefined) with `changes` applied; returns it. */
  private applyChanges(key: Key, cur: Item | undefined, changes: Update): Item {
    const next: Item = cur ? { ...cur } : { pk: key.pk, sk: key.sk };
    for (const [k, v] of Object.entries(changes.set ?? {})) next[k] = v;
    for (const [k, n] of Object.entries(changes.add ?? {})) {
      const have = next[k];
      if (have !== undefined && typeof have !== 'number') throw new InvalidRequest(`add to ${k}: not a number`);
      next[k] = (have ?? 0) + n;
    }
    for (const k of changes.remove ?? []) delete next[k];
    if (changes.ttl === null) delete next.ttl;
    else if (changes.ttl !== undefined) next.ttl = changes.ttl;
    this.write(next);
    return next;
  }

  async delete(key: Key, options: TableWriteOptions = {}): Promise<void> {
    checkKey(key);
    await this.store.write(() => this.applyDelete(key, options.condition, 'delete'), { durable: options.durable });
  }

  private applyDelete(key: Key, condition: Condition | undefined, what: string): void {
    if (condition && !conditionHolds(condition, this.current(key))) throw new ConditionFailed(`${what} ${key.pk} ${key.sk}`);
    this.deleteStmt.run(key.pk, key.sk);
  }

  async query(pk: string, options: QueryOptions = {}): Promise<QueryPage> {
    if (typeof pk !== 'string' || pk === '') throw new InvalidRequest('pk must be a non-empty string');
    const limit = options.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1) throw new InvalidRequest('query limit must be a positive integer');
    const reverse = options.reverse === true;
    const where: string[] = ['pk = ?', '(ttl IS NULL OR ttl > ?)'];
    const params: (string | number)[] = [pk, this.nowSeconds()];
    const r: SortRange = options.range ?? {};
    // Every bound of the range and the cursor, reduced to at most one lower and one upper bound:
    // given two lower bounds (a range's `gte` and a cursor's `>`), SQLite walks the index from
    // the first one and filters, so each page of a long listing re-read every row before it
    // (a SELECT of a 30,000-message IMAP folder took seconds; docs/performance.md, IMAP).
    let lower: { v: string; inclusive: boolean } | undefined;
    let upper: { v: string; inclusive: boolean } | undefined;
    const bound = (side: 'lower' | 'upper', inclusive: boolean, v: string | undefined, name: string) => {
      if (v === undefined) return;
      if (typeof v !== 'string') throw new InvalidRequest(`range.${name} must be a string`);
      const current = side === 'lower' ? lower : upper;
      // Keys compare as UTF-8 bytes, as SQLite's BINARY collation (and DynamoDB) compare them.
      const order = current === undefined ? 0 : Buffer.compare(Buffer.from(v), Buffer.from(current.v));
      const tighter = current === undefined || (side === 'lower' ? order > 0 : order < 0) || (order === 0 && !inclusive);
      if (!tighter) return;
      if (side === 'lower') lower = { v, inclusive };
      else upper = { v, inclusive };
    };
    bound('lower', true, r.gte, 'gte');
    bound('lower', false, r.gt, 'gt');
    bound('upper', true, r.lte, 'lte');
    bound('upper', false, r.lt, 'lt');
    if (r.beginsWith !== undefined && r.beginsWith !== '') {
      bound('lower', true, r.beginsWith, 'beginsWith');
      const end = prefixEnd(r.beginsWith);
      if (end !== undefined) bound('upper', false, end, 'beginsWithEnd');
    }
    if (options.cursor !== undefined) bound(reverse ? 'upper' : 'lower', false, decodeCursor(pk, options.cursor), 'cursor');
    if (lower) {
      where.push(`sk ${lower.inclusive ? '>=' : '>'} ?`);
      params.push(lower.v);
    }
    if (upper) {
      where.push(`sk ${upper.inclusive ? '<=' : '<'} ?`);
      params.push(upper.v);
    }
    // A projection is made by SQLite's JSON functions, so the attributes left out (a message's
    // summary) are walked in C and never become JavaScript strings and objects. json_each gives
    // true and false as 1 and 0; the CASE keeps them JSON booleans.
    let data = 'data';
    if (options.attributes !== undefined) {
      const names = checkAttributes(options.attributes);
      data = names.length
        ? `(SELECT json_group_object(key, CASE type WHEN 'true' THEN json('true') WHEN 'false' THEN json('false') ELSE value END) FROM json_each(items.data) WHERE key IN (${names.map(() => '?').join(', ')}))`
        : `'{}'`;
      params.unshift(...names);
    }
    // The limit is written into the SQL (it is a checked integer): with `LIMIT ?` the same query
    // took about ten times as long (docs/performance.md, Local storage).
    const sql = `SELECT pk, sk, ttl, ${data} AS data FROM items WHERE ${where.join(' AND ')} ORDER BY sk ${reverse ? 'DESC' : 'ASC'} LIMIT ${limit + 1}`;
    const s = this.statement(sql);
    const rows = this.store.read(() => s.all(...params) as Row[], 'tables.query');
    const page: QueryPage = { items: rows.slice(0, limit).map((row) => this.toItem(row)) };
    if (rows.length > limit) page.cursor = encodeCursor(pk, rows[limit - 1].sk);
    return page;
  }

  async transact(ops: TransactOp[]): Promise<void> {
    if (!Array.isArray(ops) || ops.length > this.maxTransactionOps) throw new InvalidRequest(`a transaction holds 1..${this.maxTransactionOps} operations`);
    if (ops.length === 0) return;
    const seen = new Set<string>();
    for (const op of ops) {
      const key: Key = 'put' in op ? op.put : 'update' in op ? op.update : 'delete' in op ? op.delete : op.check;
      checkKey(key);
      if ('put' in op) checkTtl(op.put.ttl);
      if ('update' in op) checkUpdate(op.changes);
      // DynamoDB refuses two operations on one item in a transaction; refuse it here too.
      const id = `${key.pk.length}:${key.pk}${key.sk}`;
      if (seen.has(id)) throw new InvalidRequest(`transaction touches ${key.pk} ${key.sk} twice`);
      seen.add(id);
    }
    await this.store.write(() => {
      // Each op's condition is checked as it is applied, with one read of its item. No two ops
      // touch one item, so the first op whose condition fails is the first failure DynamoDB would
      // report, and throwing rolls the whole transaction back.
      ops.forEach((op, i) => {
        const what = (key: Key) => `transaction op ${i} (${key.pk} ${key.sk})`;
        if ('update' in op && this.updateInPlace(op.update, op.changes, op.condition, what)) return;
        const key: Key = 'put' in op ? op.put : 'update' in op ? op.update : 'delete' in op ? op.delete : op.check;
        const cur = this.current(key);
        if (op.condition && !conditionHolds(op.condition, cur)) throw new ConditionFailed(what(key));
        if ('put' in op) this.write(op.put);
        else if ('update' in op) this.applyChanges(key, cur, op.changes);
        else if ('delete' in op) this.deleteStmt.run(key.pk, key.sk);
      });
    });
  }

  /**
   * An update of a live item that sets attributes, done by SQLite (`json_set`, the condition in
   * the WHERE clause): one statement instead of a read, a decode in JavaScript, an encode and a
   * write, for each message of a flag change (docs/performance.md, IMAP STORE). False, having
   * done nothing, when the update or the condition has a part this does not express (then the
   * caller reads the item and applies it); ConditionFailed when the condition does not hold.
   */
  private updateInPlace(key: Key, changes: Update, condition: Condition | undefined, what: (key: Key) => string): boolean {
    if (changes.add || changes.remove || changes.ttl !== undefined || !changes.set) return false;
    const cond = conditionPlan(condition);
    if (!cond) return false;
    // The statement is found by the update's shape (attribute names, condition kinds), so a batch
    // of like updates builds its SQL once; only the values differ from one item to the next.
    let shape = '';
    const values: (string | number)[] = [];
    for (const k in changes.set) {
      const v = changes.set[k];
      // An undefined value removes the attribute on the slow path (write() leaves it out).
      if (v === undefined || !SIMPLE_NAME.test(k)) return false;
      shape += `${k},`;
      values.push(JSON.stringify(v));
    }
    if (!values.length) return false;
    shape += `|${cond.shape}`;
    let stmt = this.inPlace.get(shape);
    if (!stmt) {
      const sets = shape.slice(0, shape.indexOf('|') - 1).split(',');
      const sql = `UPDATE items SET data = json_set(data, ${sets.map((k) => `'$."${k}"', json(?)`).join(', ')}) WHERE pk = ? AND sk = ? AND (ttl IS NULL OR ttl > ?)${conditionSql(cond.shape)} RETURNING octet_length(data) AS bytes`;
      if (this.inPlace.size >= 256) this.inPlace.clear();
      stmt = this.store.db.prepare(sql);
      this.inPlace.set(shape, stmt);
    }
    const row = stmt.get(...values, key.pk, key.sk, this.nowSeconds(), ...cond.params) as { bytes: number } | undefined;
    if (!row) throw new ConditionFailed(what(key));
    if (row.bytes > MAX_ITEM_BYTES) throw new InvalidRequest(`item larger than ${MAX_ITEM_BYTES} bytes`);
    return true;
  }

  /** A prepared statement from the cache (bounded: queries with many shapes come and go). */
  private statement(sql: string): Statement {
    let stmt = this.stmts.get(sql);
    if (!stmt) {
      if (this.stmts.size >= 256) this.stmts.clear();
      stmt = this.store.db.prepare(sql);
      this.stmts.set(sql, stmt);
    }
    return stmt;
  }

  /** Removes up to 1000 expired items; returns how many. Reads already ignore them. */
  async purgeExpired(): Promise<number> {
    return this.store.write(() => this.purgeStmt.run(this.nowSeconds()).changes);
  }

  async close(): Promise<void> {}
}

/** Attribute names written into a JSON path as they are (`$."name"`); others take the slow path. */
const SIMPLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The projection's attribute names, checked and without repeats. */
function checkAttributes(names: unknown): string[] {
  if (!Array.isArray(names) || !names.every((n) => typeof n === 'string' && n !== '')) throw new InvalidRequest('query attributes must be non-empty strings');
  return [...new Set(names as string[])];
}

/**
 * A condition that only a live item can meet, as a shape (the kind and name of each part, `;`
 * between parts) and the values it compares; undefined when it has a part the SQL here does not
 * express, or an absent item could meet it: the caller then checks it with conditionHolds.
 */
function conditionPlan(c: Condition | undefined): { shape: string; params: (string | number)[] } | undefined {
  if (!c || c.exists === false) return undefined;
  // Only `exists: true`, a non-null value or a comparison rules out an absent item.
  let live = c.exists === true;
  let shape = '';
  const params: (string | number)[] = [];
  for (const k in c.equals ?? {}) {
    const v = c.equals![k];
    if (!SIMPLE_NAME.test(k)) return undefined;
    if (v === null) shape += `;n:${k}`;
    else if (typeof v === 'boolean') shape += `;${v ? 't' : 'f'}:${k}`;
    else if (typeof v === 'string') shape += `;s:${k}`;
    else if (typeof v === 'number' && Number.isFinite(v)) shape += `;d:${k}`;
    else return undefined;
    if (v !== null) live = true;
    if (typeof v === 'string' || typeof v === 'number') params.push(v);
  }
  for (const [kind, part] of [
    ['<', c.lessThan],
    ['>', c.greaterThan],
  ] as const) {
    for (const k in part ?? {}) {
      const v = part![k];
      if (!SIMPLE_NAME.test(k) || typeof v !== 'number' || !Number.isFinite(v)) return undefined;
      shape += `;${kind}:${k}`;
      params.push(v);
      live = true;
    }
  }
  return live ? { shape, params } : undefined;
}

/** The SQL of a condition's shape (see conditionPlan), after the key and liveness tests. */
function conditionSql(shape: string): string {
  let sql = '';
  for (const part of shape.split(';').slice(1)) {
    const path = `'$."${part.slice(2)}"'`;
    const isNumber = `json_type(data, ${path}) IN ('integer', 'real')`;
    switch (part[0]) {
      // Absent and JSON null both extract as SQL NULL: what `equals: null` means.
      case 'n':
        sql += ` AND json_extract(data, ${path}) IS NULL`;
        break;
      case 't':
        sql += ` AND json_type(data, ${path}) = 'true'`;
        break;
      case 'f':
        sql += ` AND json_type(data, ${path}) = 'false'`;
        break;
      case 's':
        sql += ` AND json_type(data, ${path}) = 'text' AND json_extract(data, ${path}) = ?`;
        break;
      case 'd':
        sql += ` AND ${isNumber} AND json_extract(data, ${path}) = ?`;
        break;
      default:
        sql += ` AND ${isNumber} AND json_extract(data, ${path}) ${part[0]} ?`;
    }
  }
  return sql;
}

function checkUpdate(u: Update): void {
  if (!u || typeof u !== 'object') throw new InvalidRequest('update must be an object');
  const touched = new Set<string>();
  const touch = (k: string) => {
    if (RESERVED.has(k)) throw new InvalidRequest(`update may not change ${k} (use ttl for expiry)`);
    if (touched.has(k)) throw new InvalidRequest(`update touches ${k} twice`);
    touched.add(k);
  };
  for (const k of Object.keys(u.set ?? {})) touch(k);
  for (const [k, n] of Object.entries(u.add ?? {})) {
    touch(k);
    if (typeof n !== 'number' || !Number.isFinite(n)) throw new InvalidRequest(`add ${k}: not a number`);
  }
  for (const k of u.remove ?? []) touch(k);
  checkTtl(u.ttl);
}
