/**
 * String order by UTF-8 bytes, which is what S3 and DynamoDB use and what SQLite's BINARY
 * collation gives. JavaScript's `<` compares UTF-16 code units instead, which differs for
 * characters above U+FFFF against U+E000..U+FFFF.
 */

/** Compares two strings as their UTF-8 encodings would compare (= code point order). */
export function compareUtf8(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    // Surrogates (U+D800..U+DFFF) stand for code points above U+FFFF: they sort after U+E000..U+FFFF.
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    if (xs !== ys) return xs ? 1 : -1;
    return x < y ? -1 : 1;
  }
  return a.length - b.length;
}
