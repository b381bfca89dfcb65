// huggingface.js against the Space's Hugging Face inference route, as a web or Node app calls any text classifier:
//   node classify.mjs URL TOKEN TEXT [TEXT...]
// Prints one JSON object: the answer for the first text alone, for all texts sent at once (concurrent calls),
// and what the client reads from one request whose inputs are all the texts.
import { InferenceClient } from "@huggingface/inference";

const [url, token, ...texts] = process.argv.slice(2);
const client = new InferenceClient(token);
const one = await client.textClassification({ endpointUrl: url, inputs: texts[0] });
const each = await Promise.all(texts.map((inputs) => client.textClassification({ endpointUrl: url, inputs })));
const listed = await client.textClassification({ endpointUrl: url, inputs: texts });
let error = null;
try {
  await client.textClassification({ endpointUrl: url, inputs: " \u200b " });
} catch (err) {
  error = { name: err.name, message: err.message, status: err.httpResponse?.status };
}
console.log(JSON.stringify({ one, each, listed, error }));
