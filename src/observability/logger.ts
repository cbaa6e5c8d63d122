/**
 * The logger of a server process: JSON lines, or the same records made readable (pino-pretty)
 * when stdout is a terminal. Either way credentials are redacted.
 */
import type { Writable } from "node:stream";
import { type DestinationStream, type Logger, pino } from "pino";
import pinoPretty from "pino-pretty";

/** Fields that may hold a credential, wherever they appear in a record (one level deep too). */
export const REDACTED_PATHS = [
  "authorization",
  "cookie",
  "password",
  "secret",
  "token",
  "*.authorization",
  "*.cookie",
  "*.password",
  "*.secret",
  "*.token",
  "req.headers.authorization",
  "req.headers.cookie",
  'req.headers["x-api-key"]',
];

export interface LoggerOptions {
  level: string;
  base: Record<string, unknown>;
  /** Where lines go; defaults to stdout. Pretty when it is a TTY. */
  destination?: Writable & { isTTY?: boolean };
}

export function createLogger(options: LoggerOptions): Logger {
  const destination = options.destination ?? process.stdout;
  const stream: DestinationStream = destination.isTTY
    ? pinoPretty({ destination, colorize: true, sync: true, translateTime: "SYS:HH:MM:ss.l" })
    : (destination as unknown as DestinationStream);
  return pino(
    {
      level: options.level,
      base: options.base,
      redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
    },
    stream,
  );
}
