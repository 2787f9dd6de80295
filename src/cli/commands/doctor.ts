// `dmd2 doctor [--python PATH] [--json]`: checks this machine and prints each check; returns the exit status
// (0 when nothing is a problem, 1 otherwise) for the entry point to use.

import { formatDoctor } from "../../doctor/format.js";
import { runDoctor } from "../../doctor/doctor.js";

export interface DoctorFlags {
  python?: string;
  json?: boolean;
}

export async function doctorCommand(flags: DoctorFlags): Promise<number> {
  const report = await runDoctor({ python: flags.python });
  process.stdout.write(flags.json ? JSON.stringify(report) + "\n" : formatDoctor(report));
  return report.ok ? 0 : 1;
}
