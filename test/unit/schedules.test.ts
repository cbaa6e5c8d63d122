import { describe, expect, it } from "vitest";
import { dueSlot, scheduleIdentity } from "../../src/domain/schedules.ts";

const at = (iso: string) => new Date(iso);

describe("dueSlot", () => {
  const hourly = { cron: "0 * * * *", timezone: "UTC" };

  it("fires the slot that passed since the last fire", () => {
    expect(dueSlot(hourly, at("2026-11-23T10:00:00Z"), at("2026-11-23T11:00:03Z"))).toEqual(
      at("2026-11-23T11:00:00Z"),
    );
  });

  it("does not fire the same slot twice", () => {
    expect(dueSlot(hourly, at("2026-11-23T11:00:00Z"), at("2026-11-23T11:59:59Z"))).toBeNull();
  });

  it("fires once, for the latest slot, after an outage that missed several", () => {
    expect(dueSlot(hourly, at("2026-11-23T02:00:00Z"), at("2026-11-23T09:30:00Z"))).toEqual(
      at("2026-11-23T09:00:00Z"),
    );
    expect(dueSlot(hourly, at("2026-11-23T09:00:00Z"), at("2026-11-23T09:30:00Z"))).toBeNull();
  });

  it("does not fire slots from before the schedule existed", () => {
    expect(dueSlot(hourly, at("2026-11-23T10:20:00Z"), at("2026-11-23T10:40:00Z"))).toBeNull();
  });

  it("uses the schedule's time zone", () => {
    const daily = { cron: "0 19 * * *", timezone: "Europe/Paris" };
    // 19:00 in Paris is 18:00 UTC in November.
    expect(dueSlot(daily, at("2026-11-22T18:00:00Z"), at("2026-11-23T18:00:01Z"))).toEqual(
      at("2026-11-23T18:00:00Z"),
    );
    expect(dueSlot(daily, at("2026-11-22T18:00:00Z"), at("2026-11-23T17:59:59Z"))).toBeNull();
  });

  it("supports six-field (seconds) crons", () => {
    const every5s = { cron: "*/5 * * * * *", timezone: "UTC" };
    expect(dueSlot(every5s, at("2026-11-23T10:00:00Z"), at("2026-11-23T10:00:07Z"))).toEqual(
      at("2026-11-23T10:00:05Z"),
    );
  });
});

describe("scheduleIdentity", () => {
  it("ignores key order and surrounding spaces, but not params", () => {
    const a = scheduleIdentity({ cron: " 0 * * * *", timezone: "UTC", params: { a: 1, b: 2 } });
    expect(scheduleIdentity({ cron: "0 * * * *", timezone: "UTC", params: { b: 2, a: 1 } })).toBe(a);
    expect(scheduleIdentity({ cron: "0 * * * *", timezone: "UTC", params: { a: 2, b: 2 } })).not.toBe(a);
  });
});
