/**
 * PLACEHOLDER until the sanitised, sandboxed frame lands (issue 23, reader part): shows an HTML
 * message as its text only, parsed in an inert document, so nothing in it can load or run.
 */
export function MessageFrame(props: {
  html: string;
  allowRemote: boolean;
  cidUrl: (cid: string) => string | undefined;
  onRemoteBlocked?: (n: number) => void;
}) {
  const text = new DOMParser().parseFromString(props.html, 'text/html').body.textContent ?? '';
  return <div class="text-body">{text}</div>;
}
