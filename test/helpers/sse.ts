export interface SseFrame {
  id?: string;
  event?: string;
  data?: string;
  retry?: string;
  comment?: string;
}

/** Reads an SSE response until `event: end` (or the stream closes), parsing frames. */
export async function readSse(
  url: string,
  options: { key: string; lastEventId?: string; signal?: AbortSignal; onFrame?: (f: SseFrame) => void },
): Promise<{ frames: SseFrame[]; status: number; headers: Headers }> {
  const headers: Record<string, string> = {
    accept: "text/event-stream",
    authorization: `Bearer ${options.key}`,
  };
  if (options.lastEventId) headers["last-event-id"] = options.lastEventId;
  const res = await fetch(url, { headers, ...(options.signal ? { signal: options.signal } : {}) });
  const frames: SseFrame[] = [];
  if (!res.body) return { frames, status: res.status, headers: res.headers };
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let cut = buffer.indexOf("\n\n");
    while (cut >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const frame: SseFrame = {};
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) frame.comment = line.slice(1).trim();
        else {
          const i = line.indexOf(":");
          const field = line.slice(0, i) as keyof SseFrame;
          frame[field] = line.slice(i + 1).replace(/^ /, "");
        }
      }
      frames.push(frame);
      options.onFrame?.(frame);
      if (frame.event === "end") return { frames, status: res.status, headers: res.headers };
      cut = buffer.indexOf("\n\n");
    }
  }
  return { frames, status: res.status, headers: res.headers };
}

export const eventFrames = (frames: SseFrame[]) => frames.filter((f) => f.id !== undefined);
