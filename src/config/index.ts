/** The one configuration of a Flowline process: schema, loading and errors. */
export {
  CONFIG_FILE_NAME,
  CONFIG_FILE_VARIABLE,
  ConfigError,
  type ConfigIssue,
  ENVIRONMENT_VARIABLES,
  formatPath,
  type LoadConfigOptions,
  loadConfig,
  parseConfig,
} from "./load.ts";
export {
  type CommandConfig,
  type Config,
  type ConfigInput,
  configSchema,
  type DeepPartialConfig,
  LOG_LEVELS,
  type LogLevel,
  type QueueConfig,
  type Quotas,
  quotasOf,
} from "./schema.ts";
