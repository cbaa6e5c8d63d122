/**
 * The per-queue state of tenant fairness (the rule is in domain/fairness.ts): one hash per queue
 * holding the virtual clock `v` and each flow's last tag `f:<priority>:<tenant>`. Tags are
 * assigned in one script so that dispatchers in several processes never hand out the same tag
 * twice; the clock is read from the head of BullMQ's prioritized set, and the state is dropped
 * (a new epoch from 0) whenever that set is empty.
 */
import type { Redis } from "ioredis";
import { PRIORITY_LEVELS, priorityLevel } from "../domain/fairness.ts";

// KEYS[1] fairness hash, KEYS[2] BullMQ's prioritized zset (score = priority * 2^32 + counter).
// ARGV: levels, then (tenant, priority level) pairs. Returns one tag per pair.
const ASSIGN = `
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local v = 0
if #head == 0 then
  redis.call('DEL', KEYS[1])
else
  local headTag = math.floor(tonumber(head[2]) / 4294967296)
  v = math.max(tonumber(redis.call('HGET', KEYS[1], 'v') or '0'), headTag - 1)
end
local levels = tonumber(ARGV[1])
local finish = {}
local function last(field)
  local f = finish[field]
  if f == nil then
    f = tonumber(redis.call('HGET', KEYS[1], field) or '0')
    finish[field] = f
  end
  return f
end
local tags = {}
for i = 2, #ARGV, 2 do
  local tenant = ARGV[i]
  local level = tonumber(ARGV[i + 1])
  local start = v
  for q = level, levels do
    local f = last('f:' .. q .. ':' .. tenant)
    if f > start then start = f end
  end
  local tag = start + 1
  finish['f:' .. level .. ':' .. tenant] = tag
  tags[#tags + 1] = tag
end
redis.call('HSET', KEYS[1], 'v', v)
for field, tag in pairs(finish) do redis.call('HSET', KEYS[1], field, tag) end
return tags
`;

export class FairQueueClock {
  constructor(private readonly redis: Redis) {}

  /** Tags (BullMQ priorities before clamping) for jobs about to be added to one queue, in order. */
  async assign(
    stateKey: string,
    prioritizedKey: string,
    jobs: ReadonlyArray<{ tenantId: string; priority: number }>,
  ): Promise<number[]> {
    if (jobs.length === 0) return [];
    const args: string[] = [String(PRIORITY_LEVELS)];
    for (const job of jobs) args.push(job.tenantId, String(priorityLevel(job.priority)));
    const tags = (await this.redis.eval(ASSIGN, 2, stateKey, prioritizedKey, ...args)) as number[];
    return tags.map(Number);
  }
}
