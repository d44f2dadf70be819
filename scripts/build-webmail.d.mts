/** Builds the webmail into dist/webmail (see build-webmail.mjs); undefined when esbuild is not installed. */
export function buildWebmail(options?: { outdir?: string; root?: string; minify?: boolean }): Promise<{ outdir: string; files: string[] } | undefined>;
