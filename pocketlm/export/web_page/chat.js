// pocketlm's chat page: a small language model running in this browser, no server beyond the one serving the files.
//
// The conversation follows the terminal chat's rules (pocketlm/chat.py): each message goes through the chat
// template; a reply gets at most half of the model's context window and the prompt keeps the system text, the
// current message and as many recent turns as fit (the LSTM, which has no window, answers each message on its own);
// settings are checked where they are typed, with the terminal's messages. The GPT runs through transformers.js (its
// text-generation pipeline, tokenizer and chat template); the LSTM through onnxruntime-web and the loop below, with
// transformers.js's tokenizer and chat template too (so an LSTM trained with a BPE reads and writes its own tokens).
// A model trained on plain text (pocketlm.json's mode "text") is not chatted with but continues what is typed, as
// chat.py's text mode does: the passage grows with each message, on a line of its own, and keeps its newest tokens.

const $ = (id) => document.getElementById(id);
// The page's settings, which export.py writes beside it: without them the page said "Loading" for ever.
const page = await fetch("pocketlm.json").then((response) => {
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}).catch((error) => fail(`The page could not read its settings, pocketlm.json (${error.message || error}): it ` +
                         "needs the files export.py wrote beside it, served over HTTP."));
const SETTINGS = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"];
const NO_REPLY = "[no reply: the model ended its turn at once]";
const HIDDEN_REPLY = "[no reply shown: the model wrote only special tokens or spaces]";  // chat.py's words
// `?seed=N` in the page's address makes its sampling repeatable, as `chat.py --seed N` does the terminal's.
const SEED = new URLSearchParams(location.search).get("seed");
const TEXT_MODE = page.mode === "text";
if (TEXT_MODE) {  // no role, no system text: say what the page does instead
  $("name").parentElement.firstChild.textContent = "Continue a text with ";
  document.title = `Continue a text with ${page.name}`;
  $("message").placeholder = "Type the start of a text for the model to continue; Enter sends";
  $("system").parentElement.hidden = true;
  $("settings").querySelector("summary").textContent = "Sampling";
}

// ------------------------------------------------------------------------------------------------ settings

// The terminal's checks (ChatInterface.validate_option), with its messages, numbers written as Python writes them.
function validate(name, text) {
  const integer = name === "top_k" || name === "max_new_tokens";
  const value = Number(text);
  if (String(text).trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new Error(`${name}='${String(text)}' is not a valid ${name} value: ${page.ranges[name]}.`);
  }
  const ok = { temperature: value > 0, top_k: value >= 0, top_p: value > 0 && value <= 1,
               repetition_penalty: value > 0, max_new_tokens: value > 0 }[name];
  const shown = !integer && Number.isInteger(value) ? value.toFixed(1) : String(value);
  if (!ok) throw new Error(`${name}=${shown} is out of range: ${page.ranges[name]}.`);
  return value;
}

const settings = { ...page.defaults };
for (const name of SETTINGS) {
  const field = $(name);
  field.value = settings[name];
  field.addEventListener("change", () => {
    try {
      settings[name] = validate(name, field.value);
      field.classList.remove("refused");
      $("setting-error").textContent = "";
    } catch (error) {
      $("setting-error").textContent = error.message;  // refused where it is typed; the last good value stays
      field.classList.add("refused");
      field.value = settings[name];
    }
  });
}
$("do_sample").checked = settings.do_sample;
$("do_sample").addEventListener("change", () => { settings.do_sample = $("do_sample").checked; });

// ---------------------------------------------------------------------------------------------------- model

// A turn of the browser's own work (painting the reply, taking a click on Stop) between two decoding steps. Without
// it a reply is decoded in one go: onnxruntime's WebAssembly calls resolve without giving the browser a turn, so the
// text would appear only at the end and Stop could not be clicked. A message channel, not setTimeout, which browsers
// hold back to 4 ms after a few nested calls: decoding would then run at 250 tokens a second at most.
const channel = new MessageChannel();
const nextTask = () => new Promise((resume) => { channel.port1.onmessage = () => resume(); channel.port2.postMessage(0); });

function fail(message) {
  $("status").textContent = message;
  $("status").classList.add("error");
  throw new Error(message);
}

// chat.py --seed's range (numpy's and torch's seeding): any other text was read as 0, or wrapped, in silence.
if (SEED !== null && !(/^[0-9]+$/.test(SEED) && Number(SEED) < 2 ** 32)) {
  fail(`seed=${SEED} in the page's address is not a whole number from 0 to ${2 ** 32 - 1}: change it, or take it ` +
       "out for unseeded sampling.");
}
if (typeof WebAssembly !== "object") {
  fail("This browser cannot run WebAssembly, which the model needs: open the page in a current browser.");
}

const wasmPaths = { mjs: new URL("vendor/ort-wasm-simd-threaded.mjs", location.href).href,
                    wasm: new URL("vendor/ort-wasm-simd-threaded.wasm", location.href).href };
const started = performance.now();
let model;
try {
  model = page.family === "lstm" ? await loadLSTM() : await loadGPT();
} catch (error) {
  fail(`The model could not be loaded (${error.message || error}): the page needs the files export.py wrote ` +
       "beside it (pocketlm.json, vendor/ and the model's folder), served over HTTP.");
}
$("status").textContent = `Ready: ${page.family === "lstm" ? "an LSTM" : "a GPT"}, loaded in ` +
  `${((performance.now() - started) / 1000).toFixed(1)} s, running in this page.`;
$("message").disabled = $("send").disabled = false;

// transformers.js, reading the model's folder: the model/ folder beside the page and nothing else (a browser's
// default is the Hub), or in a static Space the model repository's folder (the GPT-2 export's subfolder for the
// GPT, the top for the LSTM). It is the one tokenizer of the page, for both families: the model's own, whatever
// kind (a byte-level BPE, characters, or one given to train.py --tokenizer).
async function transformersFor(subfolder) {
  const transformers = await import("./vendor/transformers.web.min.js");
  const { env, random } = transformers;
  if (SEED !== null) random.seed(Number(SEED));  // the generator transformers.js's sampler draws from
  env.backends.onnx.wasm.wasmPaths = wasmPaths;
  env.backends.onnx.wasm.numThreads = 1;  // threads need cross-origin isolation, which a plain file server lacks
  if (page.hub) {
    env.allowLocalModels = false;
    env.remotePathTemplate = `{model}/resolve/{revision}/${subfolder ? subfolder + "/" : ""}`;
  } else {
    env.allowLocalModels = true;
    env.allowRemoteModels = false;
    env.localModelPath = "./";
  }
  const where = [page.hub ? page.hub.repo : page.model, page.hub ? { revision: page.hub.revision } : {}];
  return { transformers, where };
}

// The model's chat template (the same text chat.py builds) and plain text, as token ids; ids back as text.
function textOf(tokenizer) {
  return {
    encode: (messages, generationPrompt = false) => tokenizer.encode(
      tokenizer.apply_chat_template(messages, { add_generation_prompt: generationPrompt, tokenize: false }),
      { add_special_tokens: false }),
    encodeText: (text) => tokenizer.encode(text, { add_special_tokens: false }),
    decode: (ids) => (ids.length ? tokenizer.decode(ids, { skip_special_tokens: true }) : ""),
    stops: page.stop_tokens.map((token) => tokenizer.convert_tokens_to_ids(token)),
    // The characters read as the unknown token, each once: a character model's vocabulary holds its training
    // text's alone, and it reads any other alike. Said beside the reply's figures, in chat.py's words.
    unknownNote: (text) => {
      const unknown = tokenizer.unk_token_id;
      if (unknown === undefined || unknown === null) return "";  // a byte-level BPE has a token for every byte
      const missing = [...new Set(Array.from(text))].filter((character) => {
        const ids = tokenizer.encode(character, { add_special_tokens: false });
        return ids.length === 1 && ids[0] === unknown;
      });
      if (!missing.length) return "";
      const named = missing.slice(0, 8).map((character) => `'${character}'`);
      if (missing.length > 8) named.push("others");
      const listed = named.length > 1 ? `${named.slice(0, -1).join(", ")} or ${named[named.length - 1]}` : named[0];
      return `note: the model's vocabulary has no ${listed}: it reads ${missing.length > 1 ? "each" : "it"} as ` +
        `${tokenizer.unk_token}; `;
    },
  };
}

async function loadGPT() {
  const { transformers, where: [name, revision] } = await transformersFor(page.hub && page.hub.subfolder);
  const { pipeline, BaseStreamer, InterruptableStoppingCriteria, Tensor } = transformers;
  const generator = await pipeline("text-generation", name, { dtype: page.dtype, device: "wasm", ...revision });
  const tokenizer = generator.tokenizer;
  if (!tokenizer) throw new Error("the tokenizer could not be read");
  const forward = generator.model.forward.bind(generator.model);
  generator.model.forward = async (inputs) => { await nextTask(); return forward(inputs); };  // see nextTask
  const text = textOf(tokenizer);

  class Stream extends BaseStreamer {
    constructor(onToken) { super(); this.onToken = onToken; this.prompt = true; }
    put(value) {
      if (this.prompt) { this.prompt = false; return; }  // generate() hands over the prompt first
      for (const [token] of value) this.onToken(Number(token));
    }
    end() {}
  }
  return {
    ...text,
    async generate(ids, options, onToken, stopper) {
      const interrupt = new InterruptableStoppingCriteria();
      stopper.interrupt = () => interrupt.interrupt();
      const inputs = new Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]);
      await generator.model.generate({
        inputs, attention_mask: new Tensor("int64", new BigInt64Array(ids.length).fill(1n), [1, ids.length]),
        max_new_tokens: options.max_new_tokens, do_sample: options.do_sample, temperature: options.temperature,
        top_k: options.top_k, top_p: options.top_p, repetition_penalty: options.repetition_penalty,
        eos_token_id: text.stops, streamer: new Stream(onToken), stopping_criteria: [interrupt],
      });
    },
  };
}

async function loadLSTM() {
  const { transformers, where: [name, revision] } = await transformersFor("");
  const tokenizer = await transformers.AutoTokenizer.from_pretrained(name, revision);
  const ort = await import("./vendor/ort.wasm.bundle.min.mjs");
  ort.env.wasm.wasmPaths = wasmPaths;
  ort.env.wasm.numThreads = 1;
  const base = page.hub ? `https://huggingface.co/${page.hub.repo}/resolve/${page.hub.revision}/` : `${page.model}/`;
  const read = async (name) => {
    const response = await fetch(base + name);
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
    return response;
  };
  const config = await (await read("config.json")).json();
  const graph = new Uint8Array(await (await read(`onnx/${page.graph}`)).arrayBuffer());
  const session = await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] });
  const text = textOf(tokenizer);
  const layers = config.num_layers, width = config.hidden_size;
  // The model's own generation settings that the terminal honours too (transformers.js reads them for the GPT).
  const generationConfig = await read("generation_config.json").then((r) => r.json(), () => ({}));
  const minNew = generationConfig.min_new_tokens ?? 0;
  const draw = seededRandom(SEED);

  async function step(ids, h, c) {
    const feed = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, ids.length]), h, c };
    const out = await session.run(feed);
    const vocab = out.logits.dims[2];
    return { logits: out.logits.data.slice((ids.length - 1) * vocab, ids.length * vocab), h: out.h_out,
             c: out.c_out };
  }
  return {
    ...text,
    async generate(ids, options, onToken, stopper) {
      const zeros = () => new ort.Tensor("float32", new Float32Array(layers * width), [layers, 1, width]);
      let { logits, h, c } = await step(ids, zeros(), zeros());
      const seen = [...ids];
      for (let made = 0; made < options.max_new_tokens && !stopper.stopped; made++) {
        if (made < minNew) for (const id of text.stops) logits[id] = -Infinity;  // not yet the end of the turn
        const token = choose(logits, seen, options, draw);
        onToken(token);
        if (text.stops.includes(token)) return;
        seen.push(token);
        await nextTask();
        ({ logits, h, c } = await step([token], h, c));
      }
    },
  };
}

// The LSTM's next token, as transformers picks it: the repetition penalty over every token so far, then greedy,
// or temperature, top-k and top-p before a draw.
function choose(logits, seen, { do_sample, temperature, top_k, top_p, repetition_penalty }, random) {
  const scores = Float32Array.from(logits);
  for (const id of new Set(seen)) {
    scores[id] = scores[id] < 0 ? scores[id] * repetition_penalty : scores[id] / repetition_penalty;
  }
  let order = [...scores.keys()].sort((a, b) => scores[b] - scores[a]);
  if (!do_sample) return order[0];
  if (top_k > 0) order = order.slice(0, top_k);
  const best = scores[order[0]] / temperature;
  let weights = order.map((id) => Math.exp(scores[id] / temperature - best));
  const total = weights.reduce((a, b) => a + b, 0);
  weights = weights.map((w) => w / total);
  if (top_p < 1) {  // keep a token while the probability before it is under top_p: the best one always stays
    let before = 0, kept = 0;
    while (kept < weights.length && before < top_p) before += weights[kept++];
    order = order.slice(0, kept);
    weights = weights.slice(0, kept);
  }
  let draw = random() * weights.reduce((a, b) => a + b, 0);
  for (let i = 0; i < order.length; i++) if ((draw -= weights[i]) <= 0) return order[i];
  return order[order.length - 1];
}

// Numbers in [0, 1) from `seed` (mulberry32: small, and good enough to draw tokens), or Math.random without one.
function seededRandom(seed) {
  if (seed === null) return Math.random;
  let state = Number(seed) >>> 0;
  return () => {
    state = (state + 0x6D2B79F5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ----------------------------------------------------------------------------------------------- conversation

let history = [];  // {role, content} of this tab's conversation

// The terminal chat's one rule for the window: a reply gets at most half of it (generation.reply_budget).
const replyBudget = (asked) => (page.window === null ? asked : Math.max(1, Math.min(asked, Math.floor(page.window / 2))));

function replyCue() {
  const probe = [{ role: "user", content: "." }];
  return model.encode(probe, true).slice(model.encode(probe).length);
}

// chat.py's continued_passage: text mode's text to continue: with context, what was typed and written before, then
// the message on a line of its own unless what came before ends in a space or line break.
function passage(text) {
  let passage = "";
  for (const turn of [...(page.use_context ? history : []), { role: "user", content: text }]) {
    if (turn.role === "user" && passage && turn.content && !/\s$/.test(passage)) passage += "\n";
    passage += turn.content;
  }
  return passage;
}

// ChatInterface.prompt_ids: the system text, as many recent turns as fit, the message, the reply cue; in text mode
// the passage, its newest tokens where it outgrows the window (an end-of-text token when there is nothing yet).
function promptIds(text, maxNew) {
  const budget = page.window === null ? null : page.window - maxNew;
  if (TEXT_MODE) {
    const ids = model.encodeText(passage(text));
    if (!ids.length) return [model.stops[0]];
    return budget === null ? ids : ids.slice(-budget);
  }
  const system = $("system").value.trim();
  const fixed = system ? model.encode([{ role: "system", content: system }]) : [];
  let message = model.encode([{ role: "user", content: text }]);
  const cue = replyCue();
  if (budget !== null && fixed.length + message.length + cue.length > budget) {
    // Too long on its own: keep the message's end (its role token first), drop its beginning.
    const keep = Math.max(1, budget - fixed.length - cue.length - 1);
    message = [message[0], ...message.slice(1).slice(-keep)];
    return [...fixed, ...message, ...cue];
  }
  let turns = [];
  if (page.use_context) {
    let room = budget === null ? null : budget - fixed.length - message.length - cue.length;
    for (const earlier of [...history].reverse()) {  // newest first, until the window is full
      const ids = model.encode([earlier]);
      if (room !== null && ids.length > room) break;
      turns = [...ids, ...turns];
      if (room !== null) room -= ids.length;
    }
  }
  return [...fixed, ...turns, ...message, ...cue];
}

function bubble(role, text) {
  const element = document.createElement("div");
  element.className = `turn ${role}`;
  element.dataset.role = role;
  element.textContent = text;
  $("conversation").append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

let stopper = null;

async function send(text) {
  const maxNew = replyBudget(settings.max_new_tokens);
  const ids = promptIds(text, maxNew);
  bubble("user", text);
  const shown = bubble("assistant", "");
  $("send").disabled = $("message").disabled = true;
  $("stop").disabled = false;
  stopper = { stopped: false, interrupt() {} };
  const generated = [];
  const begun = performance.now();
  let first = null;
  const onToken = (token) => {
    if (model.stops.includes(token)) return;
    generated.push(token);
    // Hold back a character whose bytes are not all there yet (a multi-byte character split across tokens),
    // so the stream never shows a broken character the finished reply does not have.
    const visible = model.decode(generated).replace(/\uFFFD+$/, "");
    if (visible && first === null) first = performance.now();
    shown.textContent = visible;
  };
  try {
    await model.generate(ids, { ...settings, max_new_tokens: maxNew }, onToken, stopper);
  } catch (error) {
    shown.textContent = `[the model failed: ${error.message || error}]`;
  }
  const reply = model.decode(generated);
  // A continuation keeps its first space or line break: the passage goes on from its last character.
  const kept = TEXT_MODE ? reply : reply.trim();
  shown.textContent = kept.trim() ? kept : generated.length ? HIDDEN_REPLY : NO_REPLY;  // stops are not generated
  shown.dataset.tokens = generated.join(",");  // the reply's token ids, for whoever checks them
  if (stopper.stopped) shown.classList.add("stopped");
  history.push({ role: "user", content: text }, { role: "assistant", content: kept });
  const seconds = (performance.now() - begun) / 1000;
  const firstToken = first === null ? "no visible text" : `first token after ${((first - begun) / 1000).toFixed(3)} s`;
  const tokens = (count) => `${count} token${count === 1 ? "" : "s"}`;
  $("figures").textContent = `${model.unknownNote(text)}${tokens(generated.length)} in ${seconds.toFixed(2)} s ` +
    `(${(generated.length / seconds).toFixed(1)} tokens/s), ${firstToken}, prompt ${tokens(ids.length)}`;
  $("stop").disabled = true;
  $("send").disabled = $("message").disabled = false;
  $("message").focus();
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text || $("send").disabled) return;
  $("message").value = "";
  send(text);
});
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
});
$("stop").addEventListener("click", () => {
  if (stopper) { stopper.stopped = true; stopper.interrupt(); }
});
$("reset").addEventListener("click", () => {
  history = [];
  $("conversation").replaceChildren();
  $("figures").textContent = "";
});
