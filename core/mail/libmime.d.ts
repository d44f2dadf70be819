// libmime ships no types; these are the few functions core/mail uses (CommonJS: default import).
declare module 'libmime' {
  const libmime: {
    /** Decodes RFC 2047 encoded words (`=?charset?B|Q?...?=`) in a header value. */
    decodeWords(value: string): string;
  };
  export default libmime;
}
