/**
 * The Tables port on one DynamoDB table: partition key `pk` (S), sort key `sk` (S), TTL attribute
 * `ttl` (N, epoch seconds). Items map attribute for attribute (JSON values through util-dynamodb).
 *
 * Expiry: DynamoDB deletes expired items lazily (and emulators never do), so every read hides
 * them and every condition treats them as absent. An update must not merge into an expired item's
 * old attributes either: it is guarded with "absent or live", and when that guard is what failed,
 * the expired item is purged (conditionally on its ttl) and the update retried.
 */
import {
  DeleteItemCommand,
  GetItemCommand,
  PutItemCommand,
  QueryCommand,
  TransactWriteItemsCommand,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
  type TransactWriteItem,
} from '@aws-sdk/client-dynamodb';
import { convertToAttr, marshall, unmarshall } from '@aws-sdk/util-dynamodb';
import type { Logger } from '../../log.js';
import {
  ConditionFailed,
  InvalidRequest,
  Unavailable,
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
import { errorName, guard, toStorageError } from './errors.js';

type AV = Record<string, AttributeValue>;

/** How often an update retries after purging an expired item that raced with it. */
const MAX_PURGE_RETRIES = 3;

/** Tuning of the DynamoDB table adapter. */
export interface DynamoTablesOptions {
  /** Milliseconds since the epoch; decides which items have expired. @default Date.now */
  now?: () => number;
}

/** Tables on one DynamoDB table (every write is durable when it resolves; `durable: false` changes nothing here). */
export class DynamoTables implements Tables {
  /** TransactWriteItems' limit (100 since 2022; 25 before). */
  readonly maxTransactionOps = 100;
  private readonly now: () => number;

  constructor(
    private readonly ddb: DynamoDBClient,
    private readonly table: string,
    private readonly log: Logger,
    options: DynamoTablesOptions = {},
  ) {
    this.now = options.now ?? Date.now;
  }

  async get(key: Key, options: { consistent?: boolean } = {}): Promise<Item | undefined> {
    checkKey(key);
    const res = await guard(this.what(key), () =>
      this.ddb.send(new GetItemCommand({ TableName: this.table, Key: keyAttrs(key), ConsistentRead: options.consistent ?? true })),
    );
    if (!res.Item) return undefined;
    const item = fromAttrs(res.Item);
    return isExpired(item, this.nowSeconds()) ? undefined : item;
  }

  async put(item: Item, options: TableWriteOptions = {}): Promise<void> {
    checkKey(item);
    const e = new Expr(this.nowSeconds());
    const cond = options.condition ? e.condition(options.condition) : undefined;
    await this.write(this.what(item), () =>
      this.ddb.send(
        new PutItemCommand({
          TableName: this.table,
          Item: toAttrs(item),
          ConditionExpression: cond,
          ...e.params(),
        }),
      ),
    );
  }

  async update(key: Key, changes: Update, options: TableWriteOptions = {}): Promise<Item> {
    checkKey(key);
    for (let attempt = 0; ; attempt++) {
      const e = new Expr(this.nowSeconds());
      const updateExpression = e.update(changes);
      const cond = e.and(options.condition ? e.condition(options.condition) : undefined, e.absentOrLive());
      try {
        const res = await this.ddb.send(
          new UpdateItemCommand({
            TableName: this.table,
            Key: keyAttrs(key),
            UpdateExpression: updateExpression,
            ConditionExpression: cond,
            ReturnValues: 'ALL_NEW',
            ...e.params(),
          }),
        );
        return fromAttrs(res.Attributes ?? keyAttrs(key));
      } catch (err) {
        if (errorName(err) !== 'ConditionalCheckFailedException') throw toStorageError(err, this.what(key));
        if (attempt >= MAX_PURGE_RETRIES || !(await this.purgeIfExpired(key))) throw new ConditionFailed(this.what(key), { cause: err });
      }
    }
  }

  async delete(key: Key, options: TableWriteOptions = {}): Promise<void> {
    checkKey(key);
    const e = new Expr(this.nowSeconds());
    const cond = options.condition ? e.condition(options.condition) : undefined;
    await this.write(this.what(key), () =>
      this.ddb.send(new DeleteItemCommand({ TableName: this.table, Key: keyAttrs(key), ConditionExpression: cond, ...e.params() })),
    );
  }

  async query(pk: string, options: QueryOptions = {}): Promise<QueryPage> {
    if (typeof pk !== 'string' || pk === '') throw new InvalidRequest(`partition key ${JSON.stringify(pk)}`);
    const limit = options.limit ?? 100;
    if (!Number.isSafeInteger(limit) || limit < 1) throw new InvalidRequest(`query limit ${limit}`);
    const range = options.range ?? {};
    const e = new Expr(this.nowSeconds());
    const keyCond = e.keyCondition(pk, range);
    if (keyCond === undefined) return { items: [] };
    const filter = `attribute_not_exists(${e.name('ttl')}) OR ${e.name('ttl')} > ${e.now()}`;
    // The key and ttl are always projected: the range test and the expiry check need them.
    const projection =
      options.attributes === undefined ? undefined : [...new Set(['pk', 'sk', 'ttl', ...checkAttributes(options.attributes)])].map((a) => e.name(a)).join(', ');
    const inRange = rangeTest(range);
    let start: AV | undefined = options.cursor ? decodeCursor(pk, options.cursor) : undefined;
    const items: Item[] = [];
    // Limit counts items read before the filter drops expired ones, so keep reading until one
    // live item more than asked for is found (which also says whether a next page exists).
    for (;;) {
      const res = await guard(`query ${this.table} ${pk}`, () =>
        this.ddb.send(
          new QueryCommand({
            TableName: this.table,
            KeyConditionExpression: keyCond,
            FilterExpression: filter,
            ScanIndexForward: !options.reverse,
            ConsistentRead: options.consistent ?? true,
            ExclusiveStartKey: start,
            Limit: Math.min(1000, Math.max(10, limit + 1 - items.length)),
            ...(projection ? { ProjectionExpression: projection } : {}),
            ...e.params(),
          }),
        ),
      );
      for (const raw of res.Items ?? []) {
        const item = fromAttrs(raw);
        if (inRange(item.sk)) items.push(item);
      }
      if (items.length > limit || !res.LastEvaluatedKey) break;
      start = res.LastEvaluatedKey;
    }
    const page = items.slice(0, limit);
    return items.length > limit ? { items: page, cursor: encodeCursor(pk, page.at(-1)!.sk) } : { items: page };
  }

  async transact(ops: TransactOp[]): Promise<void> {
    if (ops.length === 0) return;
    if (ops.length > this.maxTransactionOps) throw new InvalidRequest(`${ops.length} writes in one transaction (at most ${this.maxTransactionOps})`);
    const seen = new Set<string>();
    for (const op of ops) {
      const key = opKey(op);
      checkKey(key);
      // DynamoDB refuses two operations on one item in a transaction (ValidationException).
      const id = JSON.stringify([key.pk, key.sk]);
      if (seen.has(id)) throw new InvalidRequest(`transaction touches ${key.pk} ${key.sk} twice`);
      seen.add(id);
    }
    for (let attempt = 0; ; attempt++) {
      const items = ops.map((op) => this.transactItem(op, new Expr(this.nowSeconds())));
      try {
        await this.ddb.send(new TransactWriteItemsCommand({ TransactItems: items }));
        return;
      } catch (err) {
        if (errorName(err) !== 'TransactionCanceledException') throw toStorageError(err, `transaction on ${this.table}`);
        const reasons = (err as { CancellationReasons?: { Code?: string; Message?: string }[] }).CancellationReasons ?? [];
        const failed = reasons.flatMap((r, i) => (r.Code === 'ConditionalCheckFailed' ? [i] : []));
        if (failed.length === 0) {
          const codes = reasons.map((r) => r.Code ?? 'None');
          if (codes.includes('ValidationError')) throw new InvalidRequest(`transaction on ${this.table}: ${codes.join(',')}`, { cause: err });
          throw new Unavailable(`transaction on ${this.table} (${codes.join(',')})`, { cause: err });
        }
        // An update's "absent or live" guard fails on an expired item: purge it and try again.
        let purged = false;
        if (attempt < MAX_PURGE_RETRIES) {
          for (const i of failed) {
            const op = ops[i];
            if (op && 'update' in op && (await this.purgeIfExpired(op.update))) purged = true;
          }
        }
        if (!purged) {
          const key = opKey(ops[failed[0]]);
          throw new ConditionFailed(`transaction op ${failed[0]} (${key.pk} ${key.sk})`, { cause: err });
        }
      }
    }
  }

  /** Liveness probe: a consistent read of a key nothing uses. */
  async probe(): Promise<void> {
    await guard(`table ${this.table}`, () => this.ddb.send(new GetItemCommand({ TableName: this.table, Key: keyAttrs({ pk: '#health', sk: '#probe' }) })));
  }

  private transactItem(op: TransactOp, e: Expr): TransactWriteItem {
    const table = this.table;
    if ('put' in op) {
      checkKey(op.put);
      const cond = op.condition ? e.condition(op.condition) : undefined;
      return { Put: { TableName: table, Item: toAttrs(op.put), ConditionExpression: cond, ...e.params() } };
    }
    if ('update' in op) {
      checkKey(op.update);
      const updateExpression = e.update(op.changes);
      const cond = e.and(op.condition ? e.condition(op.condition) : undefined, e.absentOrLive());
      return { Update: { TableName: table, Key: keyAttrs(op.update), UpdateExpression: updateExpression, ConditionExpression: cond, ...e.params() } };
    }
    if ('delete' in op) {
      checkKey(op.delete);
      const cond = op.condition ? e.condition(op.condition) : undefined;
      return { Delete: { TableName: table, Key: keyAttrs(op.delete), ConditionExpression: cond, ...e.params() } };
    }
    if ('check' in op) {
      checkKey(op.check);
      const cond = e.condition(op.condition);
      return { ConditionCheck: { TableName: table, Key: keyAttrs(op.check), ConditionExpression: cond, ...e.params() } };
    }
    throw new InvalidRequest(`transaction op ${JSON.stringify(op)}`);
  }

  /** Deletes the item if it exists and has expired; true when it did (or someone else had). */
  private async purgeIfExpired(key: Key): Promise<boolean> {
    const res = await guard(this.what(key), () => this.ddb.send(new GetItemCommand({ TableName: this.table, Key: keyAttrs(key), ConsistentRead: true })));
    if (!res.Item) return true;
    const item = fromAttrs(res.Item);
    if (!isExpired(item, this.nowSeconds())) return false;
    try {
      await this.ddb.send(
        new DeleteItemCommand({
          TableName: this.table,
          Key: keyAttrs(key),
          ConditionExpression: '#ttl = :ttl',
          ExpressionAttributeNames: { '#ttl': 'ttl' },
          ExpressionAttributeValues: { ':ttl': { N: String(item.ttl) } },
        }),
      );
      this.log.debug({ pk: key.pk, sk: key.sk }, 'purged expired item');
    } catch (err) {
      // Someone else replaced or purged it meanwhile: either way, retrying is right.
      if (errorName(err) !== 'ConditionalCheckFailedException') throw toStorageError(err, this.what(key));
    }
    return true;
  }

  private async write(what: string, call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
    } catch (err) {
      throw toStorageError(err, what);
    }
  }

  private nowSeconds(): number {
    return this.now() / 1000;
  }

  private what(key: Key): string {
    return `${this.table} ${key.pk} ${key.sk}`;
  }
}

function opKey(op: TransactOp): Key {
  if ('put' in op) return op.put;
  if ('update' in op) return op.update;
  if ('delete' in op) return op.delete;
  if ('check' in op) return op.check;
  throw new InvalidRequest(`transaction op ${JSON.stringify(op)}`);
}

/** True when the item carries a ttl that has passed (DynamoDB: "expired" once ttl < now). */
function isExpired(item: Item, nowSeconds: number): boolean {
  return typeof item.ttl === 'number' && item.ttl <= nowSeconds;
}

function checkKey(key: Key): void {
  if (typeof key?.pk !== 'string' || key.pk === '' || typeof key.sk !== 'string' || key.sk === '') {
    throw new InvalidRequest(`item key ${JSON.stringify({ pk: key?.pk, sk: key?.sk })}`);
  }
  // DynamoDB: a partition key value at most 2048 bytes, a sort key at most 1024.
  if (Buffer.byteLength(key.pk) > 2048 || Buffer.byteLength(key.sk) > 1024) throw new InvalidRequest('item key too long');
}

function checkAttributes(names: unknown): string[] {
  if (!Array.isArray(names) || !names.every((n) => typeof n === 'string' && n !== '')) throw new InvalidRequest('query attributes must be non-empty strings');
  return names as string[];
}

function keyAttrs(key: Key): AV {
  return { pk: { S: key.pk }, sk: { S: key.sk } };
}

function toAttrs(item: Item): AV {
  if (item.ttl !== undefined && (typeof item.ttl !== 'number' || !Number.isFinite(item.ttl))) throw new InvalidRequest(`ttl ${JSON.stringify(item.ttl)}`);
  try {
    return marshall(item, { removeUndefinedValues: true, convertClassInstanceToMap: false });
  } catch (e) {
    throw new InvalidRequest(`item ${item.pk} ${item.sk}: ${(e as Error).message}`, { cause: e });
  }
}

function fromAttrs(attrs: AV): Item {
  try {
    return unmarshall(attrs) as Item;
  } catch (e) {
    // A number beyond 2^53, written by another program, has no exact JSON value.
    throw new InvalidRequest(`stored item ${attrs.pk?.S} ${attrs.sk?.S} is not JSON: ${(e as Error).message}`, { cause: e });
  }
}

function attr(value: AttrValue): AttributeValue {
  try {
    return convertToAttr(value, { removeUndefinedValues: true });
  } catch (e) {
    throw new InvalidRequest(`value ${JSON.stringify(value)}: ${(e as Error).message}`, { cause: e });
  }
}

/** Sort keys compare by UTF-8 bytes, as DynamoDB compares them. */
function cmp(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** The whole SortRange as a test on a sort key (the key condition can express only one bound pair). */
function rangeTest(r: SortRange): (sk: string) => boolean {
  return (sk) =>
    (r.beginsWith === undefined || sk.startsWith(r.beginsWith)) &&
    (r.gte === undefined || cmp(sk, r.gte) >= 0) &&
    (r.gt === undefined || cmp(sk, r.gt) > 0) &&
    (r.lte === undefined || cmp(sk, r.lte) <= 0) &&
    (r.lt === undefined || cmp(sk, r.lt) < 0);
}

/** A page cursor: base64url of the last returned key, the ExclusiveStartKey of the next page. */
function encodeCursor(pk: string, sk: string): string {
  return Buffer.from(JSON.stringify([pk, sk]), 'utf8').toString('base64url');
}

function decodeCursor(pk: string, cursor: string): AV {
  try {
    const [cpk, sk] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [unknown, unknown];
    if (cpk === pk && typeof sk === 'string' && sk !== '') return keyAttrs({ pk, sk });
  } catch {
    // falls through to the error below
  }
  throw new InvalidRequest('bad query cursor');
}

const RESERVED_ATTRS = new Set(['pk', 'sk', 'ttl']);
/** An attribute name no item carries, for the no-op update expression. */
const NOOP_ATTR = 'tomlinson:none';

/** Builds one request's expressions with placeholder names and values (no reserved-word clashes). */
class Expr {
  private readonly names = new Map<string, string>();
  private readonly values: AV = {};
  private nowRef: string | undefined;

  constructor(private readonly nowSeconds: number) {}

  name(attribute: string): string {
    let ref = this.names.get(attribute);
    if (!ref) {
      ref = `#n${this.names.size}`;
      this.names.set(attribute, ref);
    }
    return ref;
  }

  value(v: AttrValue): string {
    const ref = `:v${Object.keys(this.values).length}`;
    this.values[ref] = attr(v);
    return ref;
  }

  now(): string {
    this.nowRef ??= this.value(this.nowSeconds);
    return this.nowRef;
  }

  /** The placeholders for the request, or nothing when none were used. */
  params(): { ExpressionAttributeNames?: Record<string, string>; ExpressionAttributeValues?: AV } {
    const names = Object.fromEntries([...this.names].map(([a, ref]) => [ref, a]));
    return {
      ...(this.names.size ? { ExpressionAttributeNames: names } : {}),
      ...(Object.keys(this.values).length ? { ExpressionAttributeValues: this.values } : {}),
    };
  }

  /** Parts joined by AND; DynamoDB refuses redundant parentheses, so a lone part stays bare. */
  and(...parts: (string | undefined)[]): string | undefined {
    const p = parts.filter((x): x is string => !!x);
    if (p.length <= 1) return p[0];
    return p.map((x) => `(${x})`).join(' AND ');
  }

  live(): string {
    return `(attribute_not_exists(${this.name('ttl')}) OR ${this.name('ttl')} > ${this.now()})`;
  }

  expired(): string {
    return `${this.name('ttl')} <= ${this.now()}`;
  }

  /** No item, or a live one: the guard that keeps updates from merging into expired items. */
  absentOrLive(): string {
    return `attribute_not_exists(${this.name('pk')}) OR ${this.live()}`;
  }

  /** A port Condition as a ConditionExpression, evaluated against the live item only. */
  condition(c: Condition): string {
    const parts: string[] = [];
    if (c.exists === false) parts.push(`attribute_not_exists(${this.name('pk')}) OR ${this.expired()}`);
    if (c.exists === true) parts.push(`attribute_exists(${this.name('pk')}) AND ${this.live()}`);
    for (const [a, v] of Object.entries(c.equals ?? {})) {
      const n = this.name(a);
      if (v === null) parts.push(`attribute_not_exists(${n}) OR attribute_type(${n}, ${this.value('NULL')}) OR ${this.expired()}`);
      else parts.push(`${n} = ${this.value(v)} AND ${this.live()}`);
    }
    for (const [a, v] of Object.entries(c.lessThan ?? {})) parts.push(`${this.name(a)} < ${this.value(num(v))} AND ${this.live()}`);
    for (const [a, v] of Object.entries(c.greaterThan ?? {})) parts.push(`${this.name(a)} > ${this.value(num(v))} AND ${this.live()}`);
    // An empty condition holds for anything, like no condition at all.
    return this.and(...parts) ?? `attribute_not_exists(${this.name('pk')}) OR attribute_exists(${this.name('pk')})`;
  }

  /** A port Update as an UpdateExpression (SET, ADD, REMOVE). */
  update(u: Update): string {
    if (!u || typeof u !== 'object') throw new InvalidRequest('update must be an object');
    const set: string[] = [];
    const add: string[] = [];
    const remove: string[] = [];
    // DynamoDB refuses overlapping paths in one expression; refuse them first with a clear message
    // (and the same one as the local family).
    const touched = new Set<string>();
    const touch = (a: string): string => {
      if (RESERVED_ATTRS.has(a)) throw new InvalidRequest(`update may not change ${a} (use ttl for expiry)`);
      if (touched.has(a)) throw new InvalidRequest(`update touches ${a} twice`);
      touched.add(a);
      return this.name(a);
    };
    for (const [a, v] of Object.entries(u.set ?? {})) {
      const n = touch(a);
      if (v !== undefined) set.push(`${n} = ${this.value(v)}`);
    }
    for (const [a, v] of Object.entries(u.add ?? {})) add.push(`${touch(a)} ${this.value(num(v))}`);
    for (const a of u.remove ?? []) remove.push(touch(a));
    if (u.ttl === null) remove.push(this.name('ttl'));
    else if (u.ttl !== undefined) set.push(`${this.name('ttl')} = ${this.value(num(u.ttl))}`);
    const clauses = [
      set.length ? `SET ${set.join(', ')}` : '',
      add.length ? `ADD ${add.join(', ')}` : '',
      remove.length ? `REMOVE ${remove.join(', ')}` : '',
    ].filter(Boolean);
    // An update with no changes still creates the item; removing an attribute that no item has
    // is a valid no-op expression (key attributes may not appear in one).
    return clauses.length ? clauses.join(' ') : `REMOVE ${this.name(NOOP_ATTR)}`;
  }

  /** The key condition for a query, or undefined when the range is empty by construction. */
  keyCondition(pk: string, r: SortRange): string | undefined {
    const base = `${this.name('pk')} = ${this.value(pk)}`;
    const lower = pick(r.gte, r.gt, 1);
    const upper = pick(r.lte, r.lt, -1);
    const prefix = r.beginsWith !== undefined && r.beginsWith !== '';
    // DynamoDB refuses placeholders an expression does not use, so name sk only when needed.
    const sk = prefix || lower || upper ? this.name('sk') : '';
    if (prefix) return `${base} AND begins_with(${sk}, ${this.value(r.beginsWith!)})`;
    if (lower && upper) {
      if (cmp(lower.v, upper.v) > 0) return undefined;
      // BETWEEN is inclusive; rangeTest drops the excluded endpoints afterwards.
      return `${base} AND ${sk} BETWEEN ${this.value(lower.v)} AND ${this.value(upper.v)}`;
    }
    if (lower) return `${base} AND ${sk} ${lower.strict ? '>' : '>='} ${this.value(lower.v)}`;
    if (upper) return `${base} AND ${sk} ${upper.strict ? '<' : '<='} ${this.value(upper.v)}`;
    return base;
  }
}

/** The tighter of an inclusive and an exclusive bound (direction 1: lower bound, -1: upper). */
function pick(inclusive: string | undefined, exclusive: string | undefined, direction: 1 | -1): { v: string; strict: boolean } | undefined {
  if (inclusive === undefined && exclusive === undefined) return undefined;
  if (inclusive === undefined) return { v: exclusive!, strict: true };
  if (exclusive === undefined) return { v: inclusive, strict: false };
  return cmp(exclusive, inclusive) * direction >= 0 ? { v: exclusive, strict: true } : { v: inclusive, strict: false };
}

function num(v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidRequest(`expected a number, got ${JSON.stringify(v)}`);
  return v;
}
