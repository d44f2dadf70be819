/** Builds the admin CLI bundle (see build-cli.mjs); undefined when esbuild is not installed. */
export function buildCli(options?: { outdir?: string; root?: string }): Promise<{ outdir: string; inputs: string[] } | undefined>;
