/**
 * A tiny authoritative DNS server on 127.0.0.1 (UDP and TCP on the same ephemeral port) answering
 * from a table the test gives: A, AAAA, MX (a null MX is `{ priority: 0, exchange: '.' }`), TXT,
 * PTR and CNAME; NXDOMAIN for names not in the table, an empty answer (NODATA) for a known name
 * without that type. `behaviour` makes it drop queries (timeouts) or answer SERVFAIL.
 * Hand-written because the wire format needed here is small (RFC 1035 §4) and no DNS server
 * package is installed; it serves tests only.
 */
import { createSocket, type Socket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import { isIPv4, isIPv6 } from 'node:net';

/** What one name answers. TXT strings longer than 255 octets are split into chunks. */
export interface DnsRecords {
  A?: string[];
  AAAA?: string[];
  MX?: { priority: number; exchange: string }[];
  TXT?: (string | string[])[];
  PTR?: string[];
  CNAME?: string;
}

/** Name (without trailing dot, any case) -> records. */
export type DnsZone = Record<string, DnsRecords>;

/** How the server treats queries. */
export type DnsBehaviour = 'answer' | 'drop' | 'servfail';

/** A running test DNS server. */
export interface TestDnsServer {
  /** `127.0.0.1:port`, ready for `dnsServers` / `setServers`. */
  address: string;
  port: number;
  /** Replaces or adds the records of one name. */
  set(name: string, records: DnsRecords): void;
  /** Removes a name (it then answers NXDOMAIN). */
  remove(name: string): void;
  behaviour: DnsBehaviour;
  /** Queries received so far, as `TYPE name`. */
  readonly queries: string[];
  close(): Promise<void>;
}

const TYPES: Record<number, keyof DnsRecords> = { 1: 'A', 28: 'AAAA', 15: 'MX', 16: 'TXT', 12: 'PTR', 5: 'CNAME' };
const CODES: Record<string, number> = { A: 1, AAAA: 28, MX: 15, TXT: 16, PTR: 12, CNAME: 5 };

/** Starts the server with a copy of `zone`. */
export async function startDnsServer(zone: DnsZone = {}, options: { ttl?: number } = {}): Promise<TestDnsServer> {
  const ttl = options.ttl ?? 300;
  const table = new Map<string, DnsRecords>();
  for (const [k, v] of Object.entries(zone)) table.set(norm(k), v);
  const queries: string[] = [];
  const state = { behaviour: 'answer' as DnsBehaviour };

  const answer = (query: Buffer, tcp: boolean): Buffer | undefined => {
    if (query.length < 12) return undefined;
    const id = query.readUInt16BE(0);
    const flags = query.readUInt16BE(2);
    const arcount = query.readUInt16BE(10);
    let off = 12;
    const labels: string[] = [];
    while (off < query.length) {
      const len = query[off++];
      if (len === 0) break;
      labels.push(query.subarray(off, off + len).toString('latin1'));
      off += len;
    }
    if (off + 4 > query.length) return undefined;
    const qtype = query.readUInt16BE(off);
    const questionEnd = off + 4;
    const name = norm(labels.join('.'));
    const typeName = TYPES[qtype] ?? String(qtype);
    queries.push(`${typeName} ${name}`);
    if (state.behaviour === 'drop') return undefined;

    const question = query.subarray(12, questionEnd);
    const rd = flags & 0x0100;
    let rcode = 0;
    const answers: Buffer[] = [];
    if (state.behaviour === 'servfail') rcode = 2;
    else {
      const rec = table.get(name);
      if (!rec) rcode = 3;
      else {
        const want = TYPES[qtype];
        if (rec.CNAME && want !== 'CNAME') answers.push(rr(5, encodeName(rec.CNAME)));
        else if (want) for (const rdata of encodeRdata(want, rec)) answers.push(rr(qtype, rdata));
      }
    }
    const build = (list: Buffer[], tc: boolean): Buffer => {
      const header = Buffer.alloc(12);
      header.writeUInt16BE(id, 0);
      header.writeUInt16BE(0x8000 | 0x0400 | rd | 0x0080 | (tc ? 0x0200 : 0) | rcode, 2); // QR AA RD RA TC
      header.writeUInt16BE(1, 4);
      header.writeUInt16BE(list.length, 6);
      return Buffer.concat([header, question, ...list]);
    };
    let msg = build(answers, false);
    // RFC 1035 §4.2.1: without EDNS (an OPT record in the query) UDP answers stop at 512 octets.
    if (!tcp && arcount === 0 && msg.length > 512) msg = build([], true);
    return msg;

    function rr(type: number, rdata: Buffer): Buffer {
      const head = Buffer.alloc(12);
      head.writeUInt16BE(0xc00c, 0); // pointer to the question name
      head.writeUInt16BE(type, 2);
      head.writeUInt16BE(1, 4);
      head.writeUInt32BE(ttl, 6);
      head.writeUInt16BE(rdata.length, 10);
      return Buffer.concat([head, rdata]);
    }
  };

  const udp: Socket = createSocket('udp4');
  udp.on('message', (msg, rinfo) => {
    const reply = answer(msg, false);
    if (reply) udp.send(reply, rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve, reject) => {
    udp.once('error', reject);
    udp.bind(0, '127.0.0.1', () => resolve());
  });
  const port = udp.address().port;

  const tcpSockets = new Set<import('node:net').Socket>();
  const tcp: Server = createServer((sock) => {
    tcpSockets.add(sock);
    sock.on('close', () => tcpSockets.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const len = buf.readUInt16BE(0);
        const reply = answer(buf.subarray(2, 2 + len), true);
        buf = buf.subarray(2 + len);
        if (reply) {
          const l = Buffer.alloc(2);
          l.writeUInt16BE(reply.length);
          sock.write(Buffer.concat([l, reply]));
        }
      }
    });
  });
  await new Promise<void>((resolve) => {
    // TCP on the same port as UDP; if it is taken, the server is UDP-only (EDNS covers big answers).
    tcp.once('error', () => resolve());
    tcp.listen(port, '127.0.0.1', () => resolve());
  });

  return {
    address: `127.0.0.1:${port}`,
    port,
    set: (name, records) => void table.set(norm(name), records),
    remove: (name) => void table.delete(norm(name)),
    get behaviour() {
      return state.behaviour;
    },
    set behaviour(b: DnsBehaviour) {
      state.behaviour = b;
    },
    queries,
    close: async () => {
      for (const s of tcpSockets) s.destroy();
      await Promise.all([
        new Promise<void>((resolve) => udp.close(() => resolve())),
        new Promise<void>((resolve) => (tcp.listening ? tcp.close(() => resolve()) : resolve())),
      ]);
    },
  };
}

function norm(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

function encodeName(name: string): Buffer {
  const n = norm(name);
  if (n === '') return Buffer.from([0]);
  const parts = n.split('.').map((l) => {
    const b = Buffer.from(l, 'latin1');
    return Buffer.concat([Buffer.from([b.length]), b]);
  });
  return Buffer.concat([...parts, Buffer.from([0])]);
}

function encodeRdata(type: keyof DnsRecords, rec: DnsRecords): Buffer[] {
  switch (type) {
    case 'A':
      return (rec.A ?? []).filter((ip) => isIPv4(ip)).map((ip) => Buffer.from(ip.split('.').map(Number)));
    case 'AAAA':
      return (rec.AAAA ?? []).filter((ip) => isIPv6(ip)).map(ipv6Bytes);
    case 'MX':
      return (rec.MX ?? []).map((mx) => {
        const pref = Buffer.alloc(2);
        pref.writeUInt16BE(mx.priority);
        return Buffer.concat([pref, encodeName(mx.exchange)]);
      });
    case 'TXT':
      return (rec.TXT ?? []).map((t) => {
        const chunks = (Array.isArray(t) ? t : [t]).flatMap((s) => {
          const b = Buffer.from(s, 'utf8');
          const out: Buffer[] = [];
          for (let i = 0; i < b.length || i === 0; i += 255) out.push(b.subarray(i, i + 255));
          return out;
        });
        return Buffer.concat(chunks.map((c) => Buffer.concat([Buffer.from([c.length]), c])));
      });
    case 'PTR':
      return (rec.PTR ?? []).map(encodeName);
    case 'CNAME':
      return rec.CNAME ? [encodeName(rec.CNAME)] : [];
  }
}

function ipv6Bytes(ip: string): Buffer {
  const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g || '0', 16), i * 2));
  return out;
}

/** The record type codes the server knows, for tests that need them. */
export const DNS_TYPE_CODES = CODES;
