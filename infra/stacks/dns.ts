/**
 * DNS: with a Route 53 hosted zone the DNS stack writes the mail host's A record, the MX record,
 * SPF and DMARC TXT records of each domain in the zone. Either way `addDnsOutputs` lists the exact
 * records (DKIM too, whose public half only exists once the key is set) for the user's DNS
 * provider. PTR records cannot be made here: AWS sets reverse DNS for an Elastic IP on request
 * (docs/deploy.md).
 */
import { CfnOutput, Duration, Fn, Stack, type StackProps } from 'aws-cdk-lib';
import * as route53 from 'aws-cdk-lib/aws-route53';
import type { Construct } from 'constructs';
import type { Stack as StackType } from 'aws-cdk-lib';
import type { StageConfig } from '../config.js';

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
  type: 'A' | 'MX' | 'TXT';
  value: string;
}

/** The SPF policy of a domain (RFC 7208 §4.6): the MX hosts, plus the direct-delivery addresses. */
export function spfRecord(c: StageConfig, outboundAddresses: string[]): string {
  const ips = c.outbound === 'direct' ? outboundAddresses.map((a) => ` ip4:${a}`).join('') : '';
  // With a smarthost, its provider's SPF include must be added by hand (docs/deploy.md).
  return `v=spf1 mx${ips} -all`;
}

/** The records a stage needs, MX first; DKIM is listed with a placeholder for its public key. */
export function dnsRecords(c: StageConfig, publicAddresses: string[], outboundAddresses: string[]): DnsRecord[] {
  const out: DnsRecord[] = publicAddresses.map((ip) => ({ name: c.mailHostname, type: 'A', value: ip }));
  for (const d of c.domains) {
    out.push({ name: d, type: 'MX', value: `10 ${c.mailHostname}` });
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
    description: c.hostedZone ? 'Records (A, MX, SPF, DMARC are written to Route 53; add DKIM yourself)' : 'Records to create at your DNS provider',
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
      c.domains
        .filter((d) => inZone(d, zoneName))
        .forEach((d, i) => {
          new route53.MxRecord(this, `Mx${i}`, { zone, recordName: `${d}.`, values: [{ priority: 10, hostName: c.mailHostname }], ttl });
          new route53.TxtRecord(this, `Spf${i}`, { zone, recordName: `${d}.`, values: [spfRecord(c, props.outboundAddresses)], ttl });
          new route53.TxtRecord(this, `Dmarc${i}`, { zone, recordName: `_dmarc.${d}.`, values: [`v=DMARC1; p=quarantine; rua=mailto:postmaster@${d}`], ttl });
        });
    }
  }
}
