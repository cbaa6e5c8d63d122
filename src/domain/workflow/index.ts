export * from "./canonical.ts";
export * from "./spec.ts";
export * from "./templates.ts";
export * from "./validate.ts";
