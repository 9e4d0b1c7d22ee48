// The official `openai` npm package against a running learning-chat (tests/service/openai_api.rs).
// Run with NODE_PATH-free resolution: the test passes the directory holding node_modules/openai
// as OPENAI_NODE_DIR. Environment as for python_sdk.py. Prints one JSON line on success.
import { createRequire } from "node:module";
import assert from "node:assert/strict";
import path from "node:path";

const require = createRequire(path.join(process.env.OPENAI_NODE_DIR, "package.json"));
const { default: OpenAI, AuthenticationError, NotFoundError, RateLimitError, BadRequestError } =
  await import(require.resolve("openai"));

const baseURL = process.env.BASE_URL;
const client = new OpenAI({ baseURL, apiKey: process.env.KEY, maxRetries: 0 });
const seen = {};

const models = [];
for await (const model of client.models.list()) models.push(model);
assert.ok(models.some((m) => m.id === "math" && m.owned_by === "learning-chat" && m.description));
seen.models = models.map((m) => m.id).sort();

const question = [{ role: "user", content: "What is a fraction, in the Node test?" }];
const first = await client.chat.completions.create({ model: "math", messages: question });
const answer = first.choices[0].message.content;
assert.ok(answer);
assert.equal(first.choices[0].finish_reason, "stop");
assert.equal(first.cached, false);
const again = await client.chat.completions.create({ model: "math", messages: question });
assert.equal(again.cached, true);
assert.equal(again.choices[0].message.content, answer);

let streamed = "";
let finish = null;
let usage = null;
const stream = await client.chat.completions.create({
  model: "math", messages: question, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    streamed += choice.delta.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
assert.equal(streamed, answer);
assert.equal(finish, "stop");
assert.ok(usage.total_tokens > 0);

const followUp = await client.chat.completions.create({
  model: "math",
  messages: [...question, { role: "assistant", content: answer },
    { role: "user", content: "And a decimal?" }],
});
assert.ok(followUp.choices[0].message.content);
assert.equal(followUp.turn, 2);

await assert.rejects(
  new OpenAI({ baseURL, apiKey: "lc_not_a_key", maxRetries: 0 }).models.list(),
  (e) => e instanceof AuthenticationError && e.status === 401 && e.code === "invalid_api_key");
await assert.rejects(
  client.chat.completions.create({ model: "astrology", messages: question }),
  (e) => e instanceof NotFoundError && e.code === "model_not_found");
await assert.rejects(
  client.chat.completions.create({ model: "math", messages: question, tools: [{ type: "function", function: { name: "f" } }] }),
  (e) => e instanceof BadRequestError && e.code === "unsupported" && e.param === "tools");
const limited = new OpenAI({ baseURL, apiKey: process.env.LIMITED_KEY, maxRetries: 0 });
await assert.rejects(
  (async () => {
    await limited.chat.completions.create({ model: "history", messages: question });
    await limited.chat.completions.create({ model: "history", messages: question });
  })(),
  (e) => e instanceof RateLimitError && e.status === 429 && e.code === "rate_limit_exceeded"
    && Number(e.headers.get("retry-after")) >= 1);

console.log(JSON.stringify(seen));
