// Colours for what the CLI writes to stderr: only when stderr is a terminal that supports them, and never when
// NO_COLOR is set (https://no-color.org). chalk's default instance looks at stdout and ignores NO_COLOR.
import { Chalk, supportsColor, supportsColorStderr } from "chalk";

const noColor = process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "";

/** For stderr (progress, phases, errors). */
export const color = new Chalk({ level: noColor || !supportsColorStderr ? 0 : supportsColorStderr.level });
/** For stdout (plan and doctor print their reports there). */
export const stdoutColor = new Chalk({ level: noColor || !supportsColor ? 0 : supportsColor.level });
