// What the benchmark entry points (main.ts, quality.ts) share: argument parsing with --help and a one-line usage
// error (exit 2), and running main() when the file is executed directly.

import path from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";

type Options = NonNullable<ParseArgsConfig["options"]>;

type Values<O extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: O }>>["values"];

/** The parsed options, or the exit status when there is nothing more to do (0 after --help, 2 on bad arguments). */
export function parseBenchArgs<const O extends Options>(argv: string[], options: O, usage: string): Values<O> | number {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: argv, options: { ...options, help: { type: "boolean", short: "h", default: false } } }));
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n${usage}\n`);
    return 2;
  }
  if (values.help === true) {
    process.stdout.write(`${usage}\n`);
    return 0;
  }
  return values as Values<O>;
}

/** Runs `main(argv)` and exits with its status when `moduleUrl` is the script node was started with. */
export function runIfMain(moduleUrl: string, main: (argv: string[]) => Promise<number>, name: string): void {
  if (process.argv[1] === undefined || path.resolve(process.argv[1]) !== path.resolve(new URL(moduleUrl).pathname)) return;
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error: unknown) => {
      process.stderr.write(`${name} failed: ${String(error)}\n`);
      process.exit(1);
    },
  );
}
