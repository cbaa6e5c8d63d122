/**
 * Secret providers (SPEC §12): where a worker finds the value of `{{secrets.NAME}}` at execution
 * time. Values are read for each attempt (a rotated secret is used by the next attempt) and kept
 * only for the attempt's duration; nothing here writes them anywhere.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { Config } from "../../config/index.ts";
import { SECRET_NAME } from "../../config/schema.ts";

export interface SecretProvider {
  /** The value, or undefined when the secret is not set (an empty value counts as not set). */
  get(name: string): Promise<string | undefined>;
  /** Where a secret is looked up, for error messages: never its value. */
  describe(name: string): string;
}

export function secretProvider(
  settings: Config["secrets"],
  env: NodeJS.ProcessEnv = process.env,
): SecretProvider {
  if (settings.provider === "env") {
    return {
      get: async (name) => nonEmpty(env[settings.prefix + name]),
      describe: (name) => `environment variable ${settings.prefix}${name}`,
    };
  }
  return {
    async get(name) {
      // Names are checked at definition time; checked again here because a path is built from them.
      if (!SECRET_NAME.test(name)) return undefined;
      try {
        return nonEmpty((await readFile(join(settings.dir, name), "utf8")).replace(/\r?\n$/, ""));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "EISDIR") return undefined;
        throw error;
      }
    },
    describe: (name) => `file ${join(settings.dir, name)}`,
  };
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === "" ? undefined : value;
}
