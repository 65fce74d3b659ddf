// Restore one exported OpenCode session straight into OpenCode's SQLite store: what `opencode import`
// writes, without starting OpenCode (its start-up costs 2 CPU-seconds per call; this runs in ~50 ms).
//
// Run by the OpenCode binary itself as a plain Bun runtime (BUN_BE_BUN=1 opencode -e <this file>), in the
// sandbox as the agent's user, while the server runs. stdin: {"project": {"id", "directory", "path"},
// "export": {"info": Session, "messages": [{"info": Message, "parts": [Part]}]}} (the `opencode export`
// shape). Rows that exist are kept (ON CONFLICT DO NOTHING), like the import does; one transaction.
//
// Exit codes: 0 and "Imported session: <id>" on success; 3 when the store's tables are not the ones this
// script knows (another OpenCode release): the caller then runs `opencode import` instead.
const { Database } = require("bun:sqlite");

const KNOWN = {
  session: ["id", "project_id", "workspace_id", "parent_id", "slug", "directory", "path", "title", "version",
    "share_url", "summary_additions", "summary_deletions", "summary_files", "summary_diffs", "metadata", "cost",
    "tokens_input", "tokens_output", "tokens_reasoning", "tokens_cache_read", "tokens_cache_write", "revert",
    "permission", "agent", "model", "time_created", "time_updated", "time_compacting", "time_archived"],
  message: ["id", "session_id", "time_created", "time_updated", "data"],
  part: ["id", "message_id", "session_id", "time_created", "time_updated", "data"],
};

function storePath() {
  if (process.env.OPENCODE_DB) return process.env.OPENCODE_DB;
  const base = process.env.XDG_DATA_HOME || `${process.env.HOME}/.local/share`;
  return `${base}/opencode/opencode.db`;
}

function json(value) {
  return value === undefined || value === null ? null : JSON.stringify(value);
}

function without(object, ...keys) {
  const copy = { ...object };
  for (const key of keys) delete copy[key];
  return copy;
}

function schemaKnown(db) {
  for (const [table, columns] of Object.entries(KNOWN)) {
    const have = db.query(`PRAGMA table_info(${table})`).all();
    const names = new Set(have.map((column) => column.name));
    if (!columns.every((name) => names.has(name))) return false;
    // A new required column we would not fill: the insert would fail half way.
    if (have.some((c) => c.notnull && c.dflt_value === null && !c.pk && !columns.includes(c.name))) return false;
  }
  return true;
}

const input = JSON.parse(await Bun.stdin.text());
const { project, export: exported } = input;
const db = new Database(storePath());
db.exec("PRAGMA busy_timeout = 15000");
if (!schemaKnown(db)) {
  console.error("unknown OpenCode store schema");
  process.exit(3);
}

const info = exported.info;
const time = info.time || {};
const tokens = info.tokens || {};
const cache = tokens.cache || {};
const summary = info.summary || {};
const now = Date.now();
const insertSession = db.prepare(`INSERT INTO session (${KNOWN.session.join(", ")})
  VALUES (${KNOWN.session.map(() => "?").join(", ")}) ON CONFLICT DO NOTHING`);
const insertMessage = db.prepare(
  "INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING");
const insertPart = db.prepare(`INSERT INTO part (id, message_id, session_id, time_created, time_updated, data)
  VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`);

db.transaction(() => {
  insertSession.run(
    info.id, project.id, null, info.parentID ?? null, info.slug, project.directory, project.path, info.title,
    info.version, info.share?.url ?? null, summary.additions ?? null, summary.deletions ?? null,
    summary.files ?? null, json(summary.diffs), null, info.cost ?? 0, tokens.input ?? 0, tokens.output ?? 0,
    tokens.reasoning ?? 0, cache.read ?? 0, cache.write ?? 0, json(info.revert), json(info.permission),
    info.agent ?? null, json(info.model), time.created, time.updated ?? time.created, time.compacting ?? null,
    time.archived ?? null);
  for (const message of exported.messages) {
    const m = message.info;
    insertMessage.run(m.id, info.id, m.time?.created ?? now, now, JSON.stringify(without(m, "id", "sessionID")));
    for (const part of message.parts) {
      insertPart.run(part.id, m.id, info.id, now, now, JSON.stringify(without(part, "id", "messageID", "sessionID")));
    }
  }
})();
console.log(`Imported session: ${info.id}`);
