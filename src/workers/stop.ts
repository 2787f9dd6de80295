// How the CLI stops a child process (a worker, a Python job), the one way: SIGTERM, then SIGKILL if it is still
// running after a grace period (what execa's forceKillAfterDelay does, with the grace chosen at each stop).

export const STOP_GRACE_MS = 5000;

interface Killable {
  /** sends a signal; returns whether it was sent */
  kill(signal: NodeJS.Signals): boolean;
}

function send(child: Killable, signal: NodeJS.Signals): boolean {
  try {
    return child.kill(signal);
  } catch {
    return false;
  }
}

/** Stops `child`; `exited` settles when it has exited. Resolves once it has exited or was SIGKILLed; `forced`:
 * it had to be SIGKILLed. */
export async function stopChild(child: Killable, exited: Promise<unknown>, graceMs = STOP_GRACE_MS): Promise<{ forced: boolean }> {
  send(child, "SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), graceMs);
  });
  const first = await Promise.race([exited.then(() => "exited" as const, () => "exited" as const), timeout]);
  clearTimeout(timer);
  return { forced: first === "timeout" && send(child, "SIGKILL") };
}
