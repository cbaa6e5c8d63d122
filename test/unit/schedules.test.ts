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

/**
 * The supervisor's loop in miniature: polls every `pollSeconds` from `from` to `to`, firing what
 * `dueSlot` says and remembering it as the last fire. Answers the slots fired, as ISO strings.
 */
function fires(
  schedule: { cron: string; timezone: string },
  from: string,
  to: string,
  pollSeconds = 300,
): string[] {
  const fired: string[] = [];
  let since = at(from);
  for (let t = at(from).getTime(); t <= at(to).getTime(); t += pollSeconds * 1000) {
    const slot = dueSlot(schedule, since, new Date(t));
    if (slot) {
      fired.push(slot.toISOString());
      since = slot;
    }
  }
  return fired;
}

describe("dueSlot across daylight-saving changes", () => {
  // Europe/Berlin: 2026-03-29 02:00 CET → 03:00 CEST (01:00Z); 2026-10-25 03:00 CEST → 02:00 CET (01:00Z).
  const berlin = (cron: string) => ({ cron, timezone: "Europe/Berlin" });

  it("spring forward: a daily slot in the skipped hour fires once, as the clock reaches 03:00", () => {
    expect(fires(berlin("30 2 * * *"), "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z", 600)).toEqual([
      "2026-03-28T01:30:00.000Z", // 02:30 CET
      "2026-03-29T01:00:00.000Z", // 02:30 does not exist: 03:00 CEST
      "2026-03-30T00:30:00.000Z", // 02:30 CEST
    ]);
    // A slot just before or at the end of the gap is unaffected.
    expect(fires(berlin("59 1 * * *"), "2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z")).toEqual([
      "2026-03-29T00:59:00.000Z",
    ]);
    expect(fires(berlin("0 3 * * *"), "2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z")).toEqual([
      "2026-03-29T01:00:00.000Z",
    ]);
  });

  it("spring forward: an hourly schedule fires once per real hour, neither skipping nor doubling", () => {
    expect(fires(berlin("0 * * * *"), "2026-03-28T23:30:00Z", "2026-03-29T03:30:00Z")).toEqual([
      "2026-03-29T00:00:00.000Z", // 01:00 CET
      "2026-03-29T01:00:00.000Z", // 03:00 CEST
      "2026-03-29T02:00:00.000Z",
      "2026-03-29T03:00:00.000Z",
    ]);
  });

  it("fall back: a daily slot in the repeated hour fires once, at its first occurrence", () => {
    expect(fires(berlin("30 2 * * *"), "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z", 600)).toEqual([
      "2026-10-25T00:30:00.000Z", // 02:30 CEST; 02:30 CET (01:30Z) does not fire again
      "2026-10-26T01:30:00.000Z", // 02:30 CET
    ]);
    expect(fires(berlin("0 30 2 * * *"), "2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z", 60)).toEqual([
      "2026-10-25T00:30:00.000Z",
    ]);
  });

  it("fall back: an hourly schedule fires once per real hour, both 02:00s included", () => {
    expect(fires(berlin("0 * * * *"), "2026-10-24T22:30:00Z", "2026-10-25T02:30:00Z")).toEqual([
      "2026-10-24T23:00:00.000Z", // 01:00 CEST
      "2026-10-25T00:00:00.000Z", // 02:00 CEST
      "2026-10-25T01:00:00.000Z", // 02:00 CET
      "2026-10-25T02:00:00.000Z", // 03:00 CET
    ]);
  });

  it("America/New_York: both changes, daily and weekly", () => {
    const ny = (cron: string) => ({ cron, timezone: "America/New_York" });
    // 2026-11-01 02:00 EDT → 01:00 EST: 01:30 happens twice and fires once.
    expect(fires(ny("30 1 * * *"), "2026-10-31T12:00:00Z", "2026-11-02T12:00:00Z", 600)).toEqual([
      "2026-11-01T05:30:00.000Z",
      "2026-11-02T06:30:00.000Z",
    ]);
    // 2026-03-08 02:00 EST → 03:00 EDT: Sunday's 02:00 becomes 03:00, next Sunday is 02:00 again.
    expect(fires(ny("0 2 * * 0"), "2026-03-07T00:00:00Z", "2026-03-16T00:00:00Z", 3600)).toEqual([
      "2026-03-08T07:00:00.000Z",
      "2026-03-15T06:00:00.000Z",
    ]);
  });

  it("a zone whose change happens at midnight still fires a daily midnight slot once a day", () => {
    // America/Santiago: 2026-09-06 00:00 -04 → 01:00 -03; 2026-04-05 00:00 -03 → 2026-04-04 23:00 -04.
    const santiago = { cron: "0 0 * * *", timezone: "America/Santiago" };
    expect(fires(santiago, "2026-09-04T12:00:00Z", "2026-09-07T12:00:00Z", 600)).toEqual([
      "2026-09-05T04:00:00.000Z",
      "2026-09-06T04:00:00.000Z", // midnight does not exist: 01:00 -03
      "2026-09-07T03:00:00.000Z",
    ]);
    expect(fires(santiago, "2026-04-02T12:00:00Z", "2026-04-05T12:00:00Z", 600)).toEqual([
      "2026-04-03T03:00:00.000Z",
      "2026-04-04T03:00:00.000Z",
      "2026-04-05T04:00:00.000Z",
    ]);
  });
});

describe("scheduleIdentity", () => {
  it("ignores key order and surrounding spaces, but not params", () => {
    const a = scheduleIdentity({ cron: " 0 * * * *", timezone: "UTC", params: { a: 1, b: 2 } });
    expect(scheduleIdentity({ cron: "0 * * * *", timezone: "UTC", params: { b: 2, a: 1 } })).toBe(a);
    expect(scheduleIdentity({ cron: "0 * * * *", timezone: "UTC", params: { a: 2, b: 2 } })).not.toBe(a);
  });
});
