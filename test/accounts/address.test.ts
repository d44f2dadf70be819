import { describe, expect, it } from 'vitest';
import { InvalidAddress, normalizeDomain, parseAddress, parseCatchAll } from '../../core/accounts/address.js';

describe('address normalisation', () => {
  it.each([
    ['Bob@Example.COM', 'bob@example.com'],
    ['<bob@example.com>', 'bob@example.com'],
    ['bob@example.com.', 'bob@example.com'],
    ['jürgen@bücher.de', 'jürgen@xn--bcher-kva.de'],
    ['JÜRGEN@BÜCHER.DE', 'jürgen@xn--bcher-kva.de'],
    // IANA's internationalised test domain (RFC 2606 successor list): 例子.测试 = xn--fsqu00a.xn--0zwm56d.
    ['用户@例子.测试', '用户@xn--fsqu00a.xn--0zwm56d'],
    ['a.b+tag@sub.example.org', 'a.b+tag@sub.example.org'],
    // NFC: "e" + combining acute equals the precomposed "é" (RFC 6532 §3.1).
    ['re\u0301ne@example.com', 'r\u00e9ne@example.com'],
  ])('%s -> %s', (input, expected) => {
    expect(parseAddress(input).address).toBe(expected);
  });

  it('keeps the local part case when configured case-sensitive, but never the domain case', () => {
    expect(parseAddress('Bob@EXAMPLE.com', { localPartCaseSensitive: true }).address).toBe('Bob@example.com');
  });

  it.each([
    ['bob', 'missing @'],
    ['@example.com', 'empty local part'],
    ['bob@', 'empty domain'],
    ['bo b@example.com', 'forbidden character'],
    ['bob@exa mple.com', 'forbidden character'],
    ['bob@example.com/x', 'forbidden character "/"'],
    ['bob@example.com?x', 'forbidden character "?"'],
    ['bob@example.com#x', 'forbidden character "#"'],
    ['bob@example.com\\x', 'forbidden character'],
    ['bob@ex%61mple.com', 'forbidden character "%"'],
    ['bob@ex\tample.com', 'forbidden character'],
    ['.bob@example.com', 'misplaced dot'],
    ['bo..b@example.com', 'misplaced dot'],
    ['bob@-example.com', 'bad label'],
    ['bob@[127.0.0.1]', 'address literals'],
    [`${'a'.repeat(65)}@example.com`, 'longer than 64 octets'],
    [`${'ü'.repeat(33)}@example.com`, 'longer than 64 octets'],
  ])('refuses %s (%s)', (input, reason) => {
    expect(() => parseAddress(input)).toThrow(InvalidAddress);
    expect(() => parseAddress(input)).toThrow(reason);
  });

  it('normalises domains and catch-all patterns', () => {
    expect(normalizeDomain('MÜNCHEN.de')).toBe('xn--mnchen-3ya.de');
    expect(normalizeDomain('xn--mnchen-3ya.DE')).toBe('xn--mnchen-3ya.de');
    expect(parseCatchAll('@Bücher.de')).toBe('xn--bcher-kva.de');
    expect(parseCatchAll('bob@bücher.de')).toBeUndefined();
    expect(() => normalizeDomain(`${'a'.repeat(64)}.com`)).toThrow(InvalidAddress);
  });
});
