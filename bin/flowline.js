#!/usr/bin/env node
// The `flowline` command. Sources are TypeScript, loaded through tsx so that workers can also
// load users' TypeScript handler modules without a build step.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../src/cli/main.ts");
await main(process.argv);
