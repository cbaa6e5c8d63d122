/**
 * Version skew at the worker (domain/versions.ts): a job whose payload format is newer than this
 * release reads is handed back, never failed and never started — it goes back to the queue,
 * delayed a little, for a worker of a newer release (during a rolling upgrade there is one, or
 * soon will be). Nothing is written to Postgres: the step stays `queued` with the same job, so
 * the reconciler sees a live job and leaves it alone. A job without a format is format 1.
 */
import { DelayedError, type Job } from "bullmq";
import type { Logger } from "pino";
import { formatOf, judgeFormat } from "../domain/versions.ts";

/** How long a handed-back job waits before a worker may take it again. */
export const HAND_BACK_DELAY_MS = 2000;

/**
 * Returns when this release may run `job`; otherwise moves it back to the queue (delayed) and
 * throws BullMQ's DelayedError, which ends the processing without failing the job or counting an
 * attempt.
 */
export async function handBackNewerJob(job: Job, token: string | undefined, log: Logger): Promise<void> {
  const judgement = judgeFormat("job", formatOf(job.data));
  if (judgement.understood) return;
  log.warn(
    { jobId: job.id, runId: job.data?.runId, stepId: job.data?.stepId, format: judgement.format },
    `job handed back: ${judgement.message}`,
  );
  await job.moveToDelayed(Date.now() + HAND_BACK_DELAY_MS, token);
  throw new DelayedError();
}
