/**
 * The JMAP core (RFC 8620) over real HTTPS with undici: the session resource (§2), every
 * request-level problem (§3.6.1) and method-level error (§3.6.2), result references (§3.7),
 * creation ids (§3.3, §5.3), the limits, Core/echo (§4) and follow-up responses. The methods are
 * a test-only module (things.ts) until the mail modules are merged.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { accountIdOf } from '../../containers/web/jmap/auth.js';
import { evaluatePointer } from '../../containers/web/jmap/engine.js';
import { coreModule } from '../../containers/web/jmap/core-methods.js';
import { JmapRegistry } from '../../containers/web/jmap/registry.js';
import { startWebHarness, type WebHarness } from './harness.js';
import { elsewhereModule, THINGS, ELSEWHERE, thingsModule } from './things.js';

const CORE = 'urn:ietf:params:jmap:core';
const ALICE = 'alice@example.com';
const BOB = 'bob@example.com';
let h: WebHarness;

beforeAll(async () => {
  h = await startWebHarness(
    {
      TOMLINSON_WEB_MAX_CALLS_IN_REQUEST: '8',
      TOMLINSON_WEB_MAX_SIZE_REQUEST: '4096',
      TOMLINSON_WEB_MAX_OBJECTS_IN_GET: '3',
      TOMLINSON_WEB_MAX_OBJECTS_IN_SET: '2',
    },
    {
      registry: new JmapRegistry([coreModule, thingsModule, elsewhereModule], {}),
      // The seam the webmail's files will use: paths outside /jmap and /.well-known/jmap.
      static: async (req, res) => {
        if (req.url !== '/hello.txt') return false;
        res.writeHead(200, { 'content-type': 'text/plain' }).end('static hello');
        return true;
      },
    },
    [ALICE, BOB],
  );
});
afterAll(async () => h?.close());

type Responses = [string, Record<string, unknown>, string][];
const responses = (json: Record<string, unknown>) => json.methodResponses as Responses;

describe('session resource (§2)', () => {
  it('serves capabilities with the limits, the account, primary accounts and URL templates, at /.well-known/jmap too', async () => {
    const res = await h.fetch('/.well-known/jmap', { user: ALICE });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a JSON document read by path
    const s = (await res.json()) as Record<string, any>;
    const id = accountIdOf(ALICE);
    expect(id).toMatch(/^A[0-9a-f]{24}$/);
    expect(s.capabilities[CORE]).toEqual({
      maxSizeUpload: h.config.web.maxSizeUpload,
      maxConcurrentUpload: 4,
      maxSizeRequest: 4096,
      maxConcurrentRequests: 4,
      maxCallsInRequest: 8,
      maxObjectsInGet: 3,
      maxObjectsInSet: 2,
      collationAlgorithms: expect.arrayContaining(['i;ascii-casemap', 'i;unicode-casemap']),
    });
    expect(s.capabilities[THINGS]).toEqual({ maxThings: 7 });
    expect(s.accounts).toEqual({ [id]: { name: ALICE, isPersonal: true, isReadOnly: false, accountCapabilities: { [THINGS]: { colours: ['red'] } } } });
    expect(s.primaryAccounts).toEqual({ [THINGS]: id });
    expect(s.username).toBe(ALICE);
    expect(s.apiUrl).toBe(`${h.base}/jmap/api/`);
    expect(s.downloadUrl).toBe(`${h.base}/jmap/download/{accountId}/{blobId}/{name}?type={type}`);
    expect(s.uploadUrl).toBe(`${h.base}/jmap/upload/{accountId}/`);
    expect(s.eventSourceUrl).toBe(`${h.base}/jmap/eventsource/?types={types}&closeafter={closeafter}&ping={ping}`);
    expect(typeof s.state).toBe('string');
    const again = (await (await h.fetch('/jmap/session', { user: ALICE })).json()) as Record<string, unknown>;
    expect(again).toEqual(s);
  });

  it('asks for credentials with 401 and WWW-Authenticate, hands other paths to the static hook, and 404s the rest', async () => {
    const res = await h.fetch('/.well-known/jmap');
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="[^"]+"/);
    await res.body?.cancel();
    const st = await h.fetch('/hello.txt');
    expect(await st.text()).toBe('static hello');
    const nf = await h.fetch('/nothing-here', { user: ALICE });
    expect(nf.status).toBe(404);
    await nf.body?.cancel();
  });

  it('offers no plain HTTP: a cleartext request on the port gets no HTTP answer', async () => {
    const answer = await new Promise<string>((resolve) => {
      const s = connect(h.port, '127.0.0.1');
      let got = '';
      s.on('data', (d) => (got += d.toString('latin1')));
      s.on('error', () => resolve(got));
      s.on('close', () => resolve(got));
      s.write(`GET /.well-known/jmap HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ${Buffer.from(`${ALICE}:password-alice`).toString('base64')}\r\n\r\n`);
      setTimeout(() => s.destroy(), 3000);
    });
    expect(answer).not.toMatch(/^HTTP\/1\.[01] 200/);
    expect(answer).not.toContain('apiUrl');
  });
});

describe('request-level problems (§3.6.1) as RFC 7807', () => {
  const problem = async (body: string, type = 'application/json') => {
    const res = await h.fetch('/jmap/api/', { method: 'POST', user: ALICE, headers: { 'content-type': type }, body });
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    return { status: res.status, json: (await res.json()) as Record<string, unknown> };
  };

  it('notJSON: a body that does not parse, or another content type', async () => {
    expect(await problem('{"using": [')).toMatchObject({ status: 400, json: { type: 'urn:ietf:params:jmap:error:notJSON', status: 400 } });
    expect(await problem(JSON.stringify({ using: [CORE], methodCalls: [] }), 'text/plain')).toMatchObject({
      status: 400,
      json: { type: 'urn:ietf:params:jmap:error:notJSON' },
    });
  });

  it('notRequest: JSON that is not a Request object', async () => {
    for (const body of [
      [],
      { methodCalls: [] },
      { using: [CORE] },
      { using: [CORE], methodCalls: [['Core/echo', {}]] },
      { using: [CORE], methodCalls: [['Core/echo', [], 'c']] },
    ]) {
      expect(await problem(JSON.stringify(body))).toMatchObject({ status: 400, json: { type: 'urn:ietf:params:jmap:error:notRequest' } });
    }
  });

  it('unknownCapability: a capability in "using" the server does not know', async () => {
    const r = await problem(JSON.stringify({ using: [CORE, 'urn:example:nope'], methodCalls: [] }));
    expect(r).toMatchObject({ status: 400, json: { type: 'urn:ietf:params:jmap:error:unknownCapability' } });
  });

  it('limit: more calls than maxCallsInRequest, a body over maxSizeRequest', async () => {
    const calls = Array.from({ length: 9 }, (_, i) => ['Core/echo', {}, `c${i}`]);
    expect(await problem(JSON.stringify({ using: [CORE], methodCalls: calls }))).toMatchObject({
      status: 400,
      json: { type: 'urn:ietf:params:jmap:error:limit', limit: 'maxCallsInRequest' },
    });
    const big = JSON.stringify({ using: [CORE], methodCalls: [['Core/echo', { pad: 'x'.repeat(5000) }, 'c']] });
    expect(await problem(big)).toMatchObject({ status: 400, json: { type: 'urn:ietf:params:jmap:error:limit', limit: 'maxSizeRequest' } });
  });
});

describe('method calls', () => {
  it('Core/echo returns its arguments, with the sessionState', async () => {
    const { status, json } = await h.api({ using: [CORE], methodCalls: [['Core/echo', { hello: true, high: 5 }, 'b3ff']] });
    expect(status).toBe(200);
    expect(responses(json)).toEqual([['Core/echo', { hello: true, high: 5 }, 'b3ff']]);
    const session = (await (await h.fetch('/jmap/session', { user: ALICE })).json()) as { state: string };
    expect(json.sessionState).toBe(session.state);
    expect(json).not.toHaveProperty('createdIds');
  });

  it('method-level errors (§3.6.2), each in its place, the other calls still answered', async () => {
    const alice = accountIdOf(ALICE);
    const { json } = await h.api({
      using: [CORE, THINGS, ELSEWHERE],
      methodCalls: [
        ['Nope/get', {}, 'a'],
        ['Thing/get', { accountId: accountIdOf(BOB), ids: [] }, 'b'],
        ['Thing/get', { accountId: 'Anotanaccount', ids: [] }, 'c'],
        ['Elsewhere/get', { accountId: alice }, 'd'],
        ['Thing/forbidden', { accountId: alice }, 'e'],
      ],
    });
    expect(responses(json).map(([n, a, c]) => [n, a.type, c])).toEqual([
      ['error', 'unknownMethod', 'a'],
      ['error', 'accountNotFound', 'b'],
      ['error', 'accountNotFound', 'c'],
      ['error', 'accountNotSupportedByMethod', 'd'],
      ['error', 'forbidden', 'e'],
    ]);
    const more = await h.api({
      using: [CORE, THINGS],
      methodCalls: [
        ['Thing/crash', {}, 'f'],
        ['Thing/get', { ids: ['1'], '#ids': { resultOf: 'f', name: 'Thing/crash', path: '' } }, 'g'],
        ['Thing/get', { ids: 'x' }, 'h'],
        ['Thing/get', { ids: ['1', '2', '3', '4'] }, 'i'],
        ['Thing/set', { create: { a: {}, b: {}, c: {} } }, 'j'],
      ],
    });
    expect(responses(more.json).map(([n, a, c]) => [n, a.type, c])).toEqual([
      ['error', 'serverFail', 'f'],
      ['error', 'invalidArguments', 'g'],
      ['error', 'invalidArguments', 'h'],
      ['error', 'requestTooLarge', 'i'],
      ['error', 'requestTooLarge', 'j'],
    ]);
  });

  it('a method of a capability left out of "using" is an unknownMethod', async () => {
    const { json } = await h.api({ using: [CORE], methodCalls: [['Thing/get', { ids: [] }, 'x']] });
    expect(responses(json)).toEqual([['error', { type: 'unknownMethod', description: expect.any(String) }, 'x']]);
  });

  it('result references (§3.7) resolve, with `*` over arrays; a failing one is invalidResultReference', async () => {
    const { json } = await h.api({
      using: [CORE, THINGS],
      methodCalls: [
        ['Thing/set', { create: { k1: { name: 'one' }, k2: { name: 'two' } } }, 's'],
        ['Core/echo', { list: [{ id: '#k1' }, { id: '#k2' }], deep: { 'a/b': { '~x': 'yes' } } }, 'e'],
        ['Thing/get', { '#ids': { resultOf: 'e', name: 'Core/echo', path: '/list/*/id' } }, 'g'],
        ['Core/echo', { '#v': { resultOf: 'e', name: 'Core/echo', path: '/deep/a~1b/~0x' } }, 'p'],
        ['Thing/get', { '#ids': { resultOf: 'nope', name: 'Core/echo', path: '/list' } }, 'r1'],
        ['Thing/get', { '#ids': { resultOf: 'e', name: 'Thing/get', path: '/list' } }, 'r2'],
        ['Thing/get', { '#ids': { resultOf: 'e', name: 'Core/echo', path: '/list/7/id' } }, 'r3'],
        ['Thing/get', { '#ids': { resultOf: 'e', name: 'Core/echo' } }, 'r4'],
      ],
    });
    const r = responses(json);
    expect(r[2][0]).toBe('Thing/get');
    expect((r[2][1].list as { name: string }[]).map((t) => t.name)).toEqual(['one', 'two']);
    expect(r[3]).toEqual(['Core/echo', { v: 'yes' }, 'p']);
    for (const i of [4, 5, 6, 7]) expect(r[i][1].type).toBe('invalidResultReference');
  });

  it('creation ids (§5.3): made by one call, used by a later one, and passed in and out with createdIds', async () => {
    const { json } = await h.api({
      using: [CORE, THINGS],
      methodCalls: [
        ['Thing/set', { create: { fresh: { name: 'new' } } }, '0'],
        ['Thing/get', { ids: ['#fresh', '#earlier', '#unknown'] }, '1'],
      ],
      createdIds: { earlier: 'X-missing' },
    });
    const r = responses(json);
    const id = (r[0][1].created as Record<string, { id: string }>).fresh.id;
    expect(r[1][1].list).toEqual([{ id, name: 'new' }]);
    expect(r[1][1].notFound).toEqual(['#earlier', '#unknown']);
    expect(json.createdIds).toEqual({ earlier: 'X-missing', fresh: id });
  });

  it("a method's follow-up responses come right after it, under the same call id; implicit calls run", async () => {
    const { json } = await h.api({
      using: [CORE, THINGS],
      methodCalls: [
        ['Thing/set', { create: {}, note: 'hi' }, 'one'],
        ['Thing/echoTwice', { x: 1 }, 'two'],
      ],
    });
    expect(responses(json)).toEqual([
      ['Thing/set', { accountId: accountIdOf(ALICE), created: {} }, 'one'],
      ['Thing/noted', { note: 'hi' }, 'one'],
      ['Thing/echoTwice', { first: { x: 1 }, user: ALICE }, 'two'],
    ]);
  });
});

describe('evaluatePointer', () => {
  it('follows RFC 6901 and JMAP `*`, flattening arrays one level', () => {
    const doc = { a: [{ b: [1, 2] }, { b: [3] }], c: { '': 0 } };
    expect(evaluatePointer(doc, '/a/*/b')).toEqual([1, 2, 3]);
    expect(evaluatePointer(doc, '/a/1/b/0')).toBe(3);
    expect(evaluatePointer(doc, '/c/')).toBe(0);
    expect(() => evaluatePointer(doc, '/a/01')).toThrow();
    expect(() => evaluatePointer(doc, 'a')).toThrow();
    expect(() => evaluatePointer(doc, '/a/-')).toThrow();
  });
});
