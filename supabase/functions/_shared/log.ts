/** Structured log lines (one JSON object per line), as Supabase's log explorer reads them. */

export type Logger = (
  level: "info" | "warn" | "error",
  event: string,
  fields: Record<string, unknown>,
) => void;

export const consoleLogger: Logger = (level, event, fields) => {
  const line = JSON.stringify({ level, event, ...fields, at: new Date().toISOString() });
  if (level === "error") console.error(line);
  else if (level === "warn") console.warn(line);
  else console.log(line);
};

export const silentLogger: Logger = () => {};
