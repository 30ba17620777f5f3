// A cascade-rag client written from the .proto files alone (no generated code):
//   node client.js [--server 127.0.0.1:50051] [--token TOKEN] [--tls-ca ca.pem] [--proto-dir ../../proto]
// Checks health, ingests two documents (client streaming), streams one answer; exits 1 on any error.
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const server = option("server", "127.0.0.1:50051");
const token = option("token", process.env.CASCADE_RAG_TOKEN || "");
const tlsCa = option("tls-ca", "");
const protoDir = option("proto-dir", path.join(__dirname, "..", "..", "proto"));

const definition = protoLoader.loadSync(
  ["cascade_rag/v1/cascade_rag.proto", "grpc/health/v1/health.proto"],
  { includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true },
);
const loaded = grpc.loadPackageDefinition(definition);
const v1 = loaded.cascade_rag.v1;
const credentials = tlsCa ? grpc.credentials.createSsl(fs.readFileSync(tlsCa)) : grpc.credentials.createInsecure();
const metadata = new grpc.Metadata();
if (token) metadata.set("authorization", `Bearer ${token}`);

const health = new loaded.grpc.health.v1.Health(server, credentials);
const documents = new v1.Documents(server, credentials);
const answer = new v1.Answer(server, credentials);

function checkHealth() {
  return new Promise((resolve, reject) =>
    health.Check({ service: "" }, { deadline: Date.now() + 10000 }, (err, reply) => (err ? reject(err) : resolve(reply.status))));
}

function ingest(docs) {
  return new Promise((resolve, reject) => {
    const call = documents.IngestDocuments(metadata, (err, reply) => (err ? reject(err) : resolve(reply)));
    for (const doc of docs) call.write({ documents: [doc] }); // one message per document: streamed
    call.end();
  });
}

function query(question) {
  return new Promise((resolve, reject) => {
    const call = answer.Query({ question, top_k: 2, max_tokens: 24 }, metadata);
    let text = "";
    let result = null;
    call.on("data", (message) => {
      if (message.response === "text") {
        text += message.text;
        process.stdout.write(message.text);
      } else {
        result = message.result;
      }
    });
    call.on("error", reject);
    call.on("end", () => resolve({ text, result }));
  });
}

async function main() {
  const status = await checkHealth();
  console.log(`health: ${status}`);
  const reply = await ingest([
    { id: "node-varn", title: "Varn lighthouse", text: "The lighthouse of Varn was built in 1841 by Ada Ilse. Its secret code is 4417.", source: "node-client" },
    { id: "node-bees", title: "Honey bees", text: "A honey bee colony has one queen and thousands of workers.", source: "node-client" },
  ]);
  console.log(`ingested: ${reply.results.map((r) => `${r.id}=${r.status}`).join(", ")} (${reply.passages} passages)`);
  process.stdout.write("answer: ");
  const { text, result } = await query("What is the secret code of the Varn lighthouse?");
  if (!result) throw new Error("the stream ended without a final result");
  if (result.text !== text) throw new Error("the final text differs from the streamed deltas");
  const t = result.timings;
  console.log(`\nfinish: ${result.finish_reason}, ${result.usage.completion_tokens} tokens`);
  console.log(`sources: ${result.sources.map((s) => `${s.document_id} (${s.score.toFixed(3)})`).join(", ")}`);
  console.log(`timings: queue ${(t.queue_time_ns / 1e6).toFixed(0)} ms, time to first token ` +
              `${(t.time_to_first_token_ns / 1e6).toFixed(0)} ms, decode ${t.decode_tokens_per_second.toFixed(1)} tokens/s`);
}

main().then(() => process.exit(0), (err) => {
  console.error(`error: ${err.code !== undefined ? grpc.status[err.code] + ": " + err.details : err.message}`);
  process.exit(1);
});
