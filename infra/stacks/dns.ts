/**
 * DNS: with a Route 53 hosted zone the DNS stack writes the mail host's A record (and the web
 * host's, when it has its own name), the MX record, the JMAP SRV record, SPF and DMARC TXT records
 * of each domain in the zone. Either way `addDnsOutputs` lists the exact
 * records (DKIM too, whose public half only exists once the key is set) for the user's DNS
 * provider. PTR records cannot be made here: AWS sets reverse DNS for an Elastic IP on request
 * (docs/deploy.md).
 */
import { CfnOutput, Duration, Fn, Stack, type StackProps } from 'aws-cdk-lib';
import * as route53 from 'aws-cdk-lib/aws-route53';
import type { Construct } from 'constructs';
import type { Stack as StackType } from 'aws-cdk-lib';
import { webHost, type StageConfig } from '../config.js';

/** Props of DnsStack. */
export interface DnsStackProps extends StackProps {
  config: StageConfig;
  /** The NLB's Elastic IPs (A record of the mail host). */
  publicAddresses: string[];
  /** Addresses outbound mail leaves from when delivering directly (NAT gateways' Elastic IPs). */
  outboundAddresses: string[];
}

/** One DNS record, as shown to the user or written to Route 53. */
export interface DnsRecord {
  name: string;
  type: 'A' | 'MX' | 'SRV' | 'TXT';
  value: string;
}

/** The SPF policy of a domain (RFC 7208 §4.6): the MX hosts, plus the direct-delivery addresses. */
export function spfRecord(c: StageConfig, outboundAddresses: string[]): string {
  const ips = c.outbound === 'direct' ? outboundAddresses.map((a) => ` ip4:${a}`).join('') : '';
  // With a smarthost, its provider's SPF include must be added by hand (docs/deploy.md).
  return `v=spf1 mx${ips} -all`;
}

/** The JMAP autodiscovery record of a domain (RFC 8620 §2.2): `_jmap._tcp.<domain>` SRV pointing
 * at the web host on 443, so a client given only an address finds `/.well-known/jmap`. Priority 0,
 * weight 1 as the RFC's example. */
export function jmapSrv(c: StageConfig, domain: string): DnsRecord {
  return { name: `_jmap._tcp.${domain}`, type: 'SRV', value: `0 1 443 ${webHost(c)}` };
}

/** Whether the stage serves JMAP (its web listener is on). */
const servesWeb = (c: StageConfig): boolean => c.listeners.web;

/** The records a stage needs, MX first; DKIM is listed with a placeholder for its public key. */
export function dnsRecords(c: StageConfig, publicAddresses: string[], outboundAddresses: string[]): DnsRecord[] {
  const out: DnsRecord[] = publicAddresses.map((ip) => ({ name: c.mailHostname, type: 'A', value: ip }));
  // The web endpoint is on the same load balancer, so a name of its own points at the same addresses.
  if (servesWeb(c) && webHost(c) !== c.mailHostname) for (const ip of publicAddresses) out.push({ name: webHost(c), type: 'A', value: ip });
  for (const d of c.domains) {
    out.push({ name: d, type: 'MX', value: `10 ${c.mailHostname}` });
    if (servesWeb(c)) out.push(jmapSrv(c, d));
    out.push({ name: d, type: 'TXT', value: spfRecord(c, outboundAddresses) });
    // RFC 7489 §6.3: start with quarantine; reports go to the domain's postmaster.
    out.push({ name: `_dmarc.${d}`, type: 'TXT', value: `v=DMARC1; p=quarantine; rua=mailto:postmaster@${d}` });
    out.push({
      name: `${c.dkimSelector}._domainkey.${d}`,
      type: 'TXT',
      value: `<the TXT value printed by: tomlinson dkim generate ${d} --selector ${c.dkimSelector}>`,
    });
  }
  return out;
}

function inZone(name: string, zone: string): boolean {
  const n = name.toLowerCase().replace(/\.$/, '');
  const z = zone.toLowerCase().replace(/\.$/, '');
  return n === z || n.endsWith(`.${z}`);
}

/** Adds the `DnsRecords` and `ReverseDns` outputs to `stack`. */
export function addDnsOutputs(stack: StackType, c: StageConfig, publicAddresses: string[], outboundAddresses: string[]): void {
  const records = dnsRecords(c, publicAddresses, outboundAddresses);
  new CfnOutput(stack, 'DnsRecords', {
    description: c.hostedZone ? 'Records (A, MX, SRV, SPF, DMARC are written to Route 53; add DKIM yourself)' : 'Records to create at your DNS provider',
    value: Fn.join(
      ' | ',
      records.map((r) => Fn.join('', [r.name, ' ', r.type, ' ', r.value])),
    ),
  });
  new CfnOutput(stack, 'ReverseDns', {
    description: 'Ask AWS to set these PTR records (EC2 console: Elastic IPs, Update reverse DNS)',
    value: Fn.join(
      ' | ',
      [...publicAddresses, ...(c.outbound === 'direct' ? outboundAddresses : [])].map((ip) => Fn.join('', [ip, ' PTR ', c.mailHostname])),
    ),
  });
}

/** Records in the configured Route 53 zone (only built when `hostedZone` is set). */
export class DnsStack extends Stack {
  constructor(scope: Construct, id: string, props: DnsStackProps) {
    super(scope, id, props);
    const c = props.config;
    const ttl = Duration.hours(1);

    if (c.hostedZone) {
      const zone = route53.HostedZone.fromHostedZoneAttributes(this, 'Zone', { hostedZoneId: c.hostedZone.zoneId, zoneName: c.hostedZone.zoneName });
      const zoneName = c.hostedZone.zoneName;
      if (inZone(c.mailHostname, zoneName)) {
        new route53.ARecord(this, 'MailHost', {
          zone,
          recordName: `${c.mailHostname}.`,
          target: route53.RecordTarget.fromIpAddresses(...props.publicAddresses),
          ttl,
        });
      }
      const web = webHost(c);
      if (servesWeb(c) && web !== c.mailHostname && inZone(web, zoneName)) {
        new route53.ARecord(this, 'WebHost', { zone, recordName: `${web}.`, target: route53.RecordTarget.fromIpAddresses(...props.publicAddresses), ttl });
      }
      c.domains
        .filter((d) => inZone(d, zoneName))
        .forEach((d, i) => {
          new route53.MxRecord(this, `Mx${i}`, { zone, recordName: `${d}.`, values: [{ priority: 10, hostName: c.mailHostname }], ttl });
          if (servesWeb(c)) {
            new route53.SrvRecord(this, `Jmap${i}`, {
              zone,
              recordName: `_jmap._tcp.${d}.`,
              values: [{ priority: 0, weight: 1, port: 443, hostName: web }],
              ttl,
            });
          }
          new route53.TxtRecord(this, `Spf${i}`, { zone, recordName: `${d}.`, values: [spfRecord(c, props.outboundAddresses)], ttl });
          new route53.TxtRecord(this, `Dmarc${i}`, { zone, recordName: `_dmarc.${d}.`, values: [`v=DMARC1; p=quarantine; rua=mailto:postmaster@${d}`], ttl });
        });
    }
  }
}
