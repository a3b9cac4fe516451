// lstmgen's web runtime: a model exported by `lstmgen export --format web`, run in the browser.
//
// Everything follows docs/bundle-format.md: the network's equations for each cell (§4), the start
// ids (§4, "Start of text"), decoding by per-id byte strings (§5), and the encoder lstmgen trains
// (§5): SentencePiece's unigram Viterbi, BPE merges or characters, with identity normalisation, no
// dummy prefix, spaces written as U+2581, byte fallback, and lstmgen's escapes (U+2581, and the
// space when the vocabulary has no bare "▁", become their UTF-8 byte pieces). docs/export.md
// explains the page; `window.poet` is its programmatic face (the tests drive it).
"use strict";
(() => {
  const SPEC = JSON.parse(document.getElementById("lstmgen-spec").textContent);
  const NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6;
  const META = "\u2581";
  const FLT_MIN = 1.1754943508222875e-38;
  const FLT_MAX = 3.4028234663852886e38;

  // -- weights ---------------------------------------------------------------------------------

  function base64Bytes(text) {
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(text);
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  async function inflate(bytes) {
    if (typeof DecompressionStream !== "function") {
      throw new Error("this browser cannot decompress the weights (no DecompressionStream); use a current browser");
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  // float16 -> float32, exactly, for all 65,536 bit patterns.
  const HALF = (() => {
    const table = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) {
      const sign = bits & 0x8000 ? -1 : 1;
      const exponent = (bits >> 10) & 0x1f;
      const fraction = bits & 0x3ff;
      let value;
      if (exponent === 0) value = fraction * 2 ** -24;
      else if (exponent === 31) value = fraction ? NaN : Infinity;
      else value = (1 + fraction / 1024) * 2 ** (exponent - 15);
      table[bits] = sign * value;
    }
    return table;
  })();

  // The weights are stored as byte planes (all first bytes, then all second bytes...): they compress better.
  function planes(raw, offset, count, itemSize) {
    const out = new Uint8Array(count * itemSize);
    for (let plane = 0; plane < itemSize; plane++) {
      const base = offset + plane * count;
      for (let i = 0; i < count; i++) out[i * itemSize + plane] = raw[base + i];
    }
    return out;
  }

  function decodeTensor(raw, entry) {
    const count = entry.shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(count);
    if (entry.kind === "f16") {
      const halves = new Uint16Array(planes(raw, entry.offset, count, 2).buffer);
      for (let i = 0; i < count; i++) values[i] = HALF[halves[i]];
    } else if (entry.kind === "f32") {
      values.set(new Float32Array(planes(raw, entry.offset, count, 4).buffer));
    } else if (entry.kind === "i8") {
      const ints = new Int8Array(raw.buffer, raw.byteOffset + entry.offset, count);
      const scales = new Float32Array(planes(raw, entry.scales, entry.shape[0], 4).buffer);
      const width = count / entry.shape[0];
      for (let r = 0, i = 0; r < entry.shape[0]; r++) {
        const scale = scales[r];
        for (let j = 0; j < width; j++, i++) values[i] = ints[i] * scale;
      }
    } else {
      throw new Error(`unknown weight encoding ${entry.kind}`);
    }
    return { shape: entry.shape, data: values };
  }

  async function loadWeights() {
    const text = document.getElementById("lstmgen-weights").textContent.replace(/\s+/g, "");
    const raw = await inflate(base64Bytes(text));
    if (raw.length !== SPEC.weights.size) throw new Error("the page's weights are damaged");
    const tensors = {};
    for (const entry of SPEC.weights.tensors) tensors[entry.name] = decodeTensor(raw, entry);
    return tensors;
  }

  // -- tokenizer -------------------------------------------------------------------------------

  const utf8 = new TextEncoder();

  class MinHeap {
    // Pairs ordered as SentencePiece's BPE agenda pops them: highest score first, then leftmost.
    constructor() { this.items = []; }
    get size() { return this.items.length; }
    static before(a, b) { return a.score > b.score || (a.score === b.score && a.left < b.left); }
    push(item) {
      const items = this.items;
      items.push(item);
      let i = items.length - 1;
      while (i > 0) {
        const parent = (i - 1) >> 1;
        if (!MinHeap.before(items[i], items[parent])) break;
        [items[i], items[parent]] = [items[parent], items[i]];
        i = parent;
      }
    }
    pop() {
      const items = this.items;
      const top = items[0];
      const last = items.pop();
      if (items.length) {
        items[0] = last;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1, r = l + 1;
          let best = i;
          if (l < items.length && MinHeap.before(items[l], items[best])) best = l;
          if (r < items.length && MinHeap.before(items[r], items[best])) best = r;
          if (best === i) break;
          [items[i], items[best]] = [items[best], items[i]];
          i = best;
        }
      }
      return top;
    }
  }

  class Tokenizer {
    constructor(spec) {
      this.modelType = spec.model_type;
      this.pieces = spec.pieces;
      this.scores = spec.scores;
      this.types = spec.types;
      this.byteIds = spec.byte_ids;
      this.pieceIds = new Map(); // NORMAL, USER_DEFINED and UNUSED pieces: what the model matches in text
      this.reserved = new Map(); // the others (control, unknown, byte pieces): found only by name
      this.prefixes = new Set();
      this.userDefined = [];
      this.maxChars = 1;
      let minScore = FLT_MAX, maxScore = FLT_MIN;
      this.unkId = 0;
      spec.pieces.forEach((piece, id) => {
        const type = spec.types[id];
        if (type === NORMAL || type === USER_DEFINED || type === UNUSED) {
          if (!this.pieceIds.has(piece)) this.pieceIds.set(piece, id);
          const chars = Array.from(piece);
          this.maxChars = Math.max(this.maxChars, chars.length);
          for (let n = 1; n < chars.length; n++) this.prefixes.add(chars.slice(0, n).join(""));
        } else if (!this.reserved.has(piece)) {
          this.reserved.set(piece, id);
        }
        if (type === USER_DEFINED) this.userDefined.push(piece);
        if (type === UNKNOWN) this.unkId = id;
        if (type === NORMAL) {
          minScore = Math.min(minScore, spec.scores[id]);
          maxScore = Math.max(maxScore, spec.scores[id]);
        }
      });
      this.userDefined.sort((a, b) => b.length - a.length); // longest match first
      this.minScore = Math.fround(minScore);
      this.maxScore = Math.fround(maxScore);
      this.unkScore = Math.fround(this.minScore - 10); // kUnkPenalty
      this.escapes = new Map(spec.escaped.map((ch) => [ch, Array.from(utf8.encode(ch), (b) => this.byteIds[b])]));
      this.tokenBytes = spec.pieces.map((piece, id) => {
        const type = spec.types[id];
        if (type === BYTE) return new Uint8Array([parseInt(piece.slice(3, 5), 16)]);
        if (type === CONTROL || type === UNKNOWN) return new Uint8Array(0);
        return utf8.encode(piece.split(META).join(" "));
      });
    }

    // Token ids of `text`, as lstmgen's Tokenizer.encode gives them.
    encode(text) {
      if (/\p{Cs}/u.test(text)) throw new Error("the text holds invalid Unicode (a lone surrogate)");
      const ids = [];
      let part = "";
      for (const ch of text) {
        const escape = this.escapes.get(ch);
        if (escape === undefined) {
          part += ch;
          continue;
        }
        if (part) this.encodePart(part, ids);
        part = "";
        ids.push(...escape);
      }
      if (part) this.encodePart(part, ids);
      return ids;
    }

    // What lstmgen's sampler reads for a prompt: each line (Python's str.splitlines) encoded on its own.
    encodeLines(text) {
      const ids = [];
      for (const line of pythonLines(text)) ids.push(...this.encode(line));
      return ids;
    }

    encodePart(part, ids) {
      const chars = Array.from(part.replace(/ /g, META)); // the normaliser: identity, spaces as U+2581
      const found =
        this.modelType === "unigram" ? this.viterbi(chars) : this.modelType === "bpe" ? this.bpe(chars) : this.chars(chars);
      for (const [piece, id] of found) {
        if (id === this.unkId) for (const b of utf8.encode(piece)) ids.push(this.byteIds[b]); // byte fallback
        else ids.push(id);
      }
    }

    pieceToId(piece) {
      const reserved = this.reserved.get(piece);
      if (reserved !== undefined) return reserved;
      const id = this.pieceIds.get(piece);
      return id === undefined ? this.unkId : id;
    }

    // SentencePiece's unigram encoder (Model::EncodeOptimized), with its float32 scores and tie order.
    viterbi(chars) {
      const n = chars.length;
      const score = new Float64Array(n + 1);
      const start = new Int32Array(n + 1).fill(-1);
      const ids = new Int32Array(n + 1);
      for (let s = 0; s < n; s++) {
        const till = score[s];
        let single = false;
        let piece = "";
        for (let e = s + 1; e <= n && e - s <= this.maxChars; e++) {
          piece += chars[e - 1];
          const id = this.pieceIds.get(piece);
          if (id === undefined) {
            if (!this.prefixes.has(piece)) break;
            continue;
          }
          const type = this.types[id];
          if (type === UNUSED) continue;
          // A user-defined piece gets length × max score − 0.1 (a double, as in C++); the others their float32 score.
          const candidate =
            type === USER_DEFINED
              ? Math.fround(utf8.encode(piece).length * this.maxScore) - 0.1 + till
              : Math.fround(this.scores[id] + till);
          if (start[e] === -1 || candidate > score[e]) {
            score[e] = Math.fround(candidate);
            start[e] = s;
            ids[e] = id;
          }
          if (e - s === 1) single = true;
        }
        if (!single) {
          const candidate = Math.fround(this.unkScore + till);
          if (start[s + 1] === -1 || candidate > score[s + 1]) {
            score[s + 1] = candidate;
            start[s + 1] = s;
            ids[s + 1] = this.unkId;
          }
        }
      }
      const found = [];
      for (let e = n; e > 0; e = start[e]) found.push([chars.slice(start[e], e).join(""), ids[e]]);
      return found.reverse();
    }

    // Symbols before merging: user-defined pieces (longest match, never merged) or single characters.
    symbols(chars) {
      const symbols = [];
      for (let i = 0; i < chars.length; ) {
        let length = 1, freeze = false;
        for (const user of this.userDefined) {
          const size = Array.from(user).length;
          if (chars.slice(i, i + size).join("") === user) {
            length = size;
            freeze = true;
            break;
          }
        }
        symbols.push({ piece: chars.slice(i, i + length).join(""), freeze });
        i += length;
      }
      return symbols;
    }

    chars(chars) {
      return this.symbols(chars).map((s) => [s.piece, this.pieceToId(s.piece)]);
    }

    // SentencePiece's BPE encoder (bpe::Model::Encode): merge the best-scored adjacent pair, leftmost first.
    bpe(chars) {
      const symbols = this.symbols(chars).map((s, i, all) => ({
        ...s,
        prev: i - 1,
        next: i + 1 < all.length ? i + 1 : -1,
      }));
      if (!symbols.length) return [];
      const agenda = new MinHeap();
      const revMerge = new Map();
      const add = (left, right) => {
        if (left === -1 || right === -1 || symbols[left].freeze || symbols[right].freeze) return;
        const piece = symbols[left].piece + symbols[right].piece;
        const id = this.pieceIds.get(piece);
        if (id === undefined) return;
        agenda.push({ left, right, score: this.scores[id], size: piece.length });
        if (this.types[id] === UNUSED) revMerge.set(piece, [symbols[left].piece, symbols[right].piece]);
      };
      for (let i = 1; i < symbols.length; i++) add(i - 1, i);
      while (agenda.size) {
        const top = agenda.pop();
        const left = symbols[top.left], right = symbols[top.right];
        if (!left.piece || !right.piece || left.piece.length + right.piece.length !== top.size) continue;
        left.piece += right.piece;
        left.next = right.next;
        if (right.next >= 0) symbols[right.next].prev = top.left;
        right.piece = "";
        add(left.prev, top.left);
        add(top.left, left.next);
      }
      const found = [];
      const resegment = (piece) => {
        const id = this.pieceToId(piece);
        const parts = this.types[id] === UNUSED ? revMerge.get(piece) : undefined;
        if (parts === undefined) found.push([piece, id]);
        else parts.forEach(resegment);
      };
      for (let i = 0; i !== -1; i = symbols[i].next) resegment(symbols[i].piece);
      return found;
    }

    decode(ids) {
      return new TextDecoder("utf-8", { ignoreBOM: true }).decode(this.bytes(ids));
    }

    bytes(ids) {
      const parts = ids.map((id) => this.tokenBytes[id]);
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let offset = 0;
      for (const p of parts) {
        out.set(p, offset);
        offset += p.length;
      }
      return out;
    }
  }

  // Python's str.splitlines(keepends=True): the line boundaries lstmgen's sampler reads a prompt by.
  function pythonLines(text) {
    const lines = [];
    const boundary = /\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]/g;
    let last = 0;
    for (let m; (m = boundary.exec(text)); ) {
      lines.push(text.slice(last, m.index + m[0].length));
      last = boundary.lastIndex;
    }
    if (last < text.length) lines.push(text.slice(last));
    return lines;
  }

  // -- the network -----------------------------------------------------------------------------

  // out[r] = bias[r] + W[r,:] · x, accumulated in float64 (W float32 rows, row-major).
  function matvec(W, rows, cols, x, out, bias) {
    for (let r = 0, o = 0; r < rows; r++, o += cols) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, j = 0;
      for (; j + 3 < cols; j += 4) {
        s0 += W[o + j] * x[j];
        s1 += W[o + j + 1] * x[j + 1];
        s2 += W[o + j + 2] * x[j + 2];
        s3 += W[o + j + 3] * x[j + 3];
      }
      for (; j < cols; j++) s0 += W[o + j] * x[j];
      out[r] = (bias ? bias[r] : 0) + (s0 + s1 + (s2 + s3));
    }
  }

  const sigmoid = (v) => 1 / (1 + Math.exp(-v));

  class Network {
    constructor(config, tensors) {
      this.config = config;
      const H = config.hidden_size, E = config.embedding_size;
      this.H = H;
      this.embedding = tensors["embedding.weight"].data;
      this.E = E;
      this.layers = [];
      for (let k = 0; k < config.num_layers; k++) {
        const inputs = k === 0 ? E : H;
        const t = (name) => tensors[`rnn.${name}_l${k}`].data;
        const f64 = (a) => Float64Array.from(a);
        if (config.cell === "lstm") {
          // One matrix over [x, h]: rows of W_ih then W_hh, and the two biases added (docs/bundle-format.md §4).
          const w = new Float32Array(4 * H * (inputs + H));
          const wih = t("weight_ih"), whh = t("weight_hh");
          for (let r = 0; r < 4 * H; r++) {
            w.set(wih.subarray(r * inputs, (r + 1) * inputs), r * (inputs + H));
            w.set(whh.subarray(r * H, (r + 1) * H), r * (inputs + H) + inputs);
          }
          const bias = f64(t("bias_ih")).map((v, i) => v + t("bias_hh")[i]);
          this.layers.push({ inputs, w, bias });
        } else if (config.cell === "gru") {
          this.layers.push({ inputs, wih: t("weight_ih"), whh: t("weight_hh"), bih: f64(t("bias_ih")), bhh: f64(t("bias_hh")) });
        } else {
          this.layers.push({ inputs, wih: t("weight_ih"), whh: t("weight_hh"), who: t("weight_ho"), bias: f64(t("bias")) });
        }
      }
      this.projection = tensors["projection.weight"] ? tensors["projection.weight"].data : null;
      this.D = this.projection ? tensors["projection.weight"].shape[0] : H;
      this.head = config.tie_weights ? this.embedding : tensors["head.weight"].data;
      this.headBias = Float64Array.from(tensors["head.bias"].data);
      this.V = config.vocab_size;
      const widest = Math.max(E, H) + H;
      this.scratch = {
        input: new Float64Array(widest),
        gates: new Float64Array(4 * H),
        gates2: new Float64Array(4 * H),
        out: new Float64Array(H),
        z: new Float64Array(this.D),
      };
    }

    zeroState() {
      const layers = this.config.num_layers, H = this.H;
      const fresh = () => Array.from({ length: layers }, () => new Float64Array(H));
      return this.config.cell === "lstm" ? { h: fresh(), c: fresh() } : { h: fresh() };
    }

    // One step: read token `id` with `state` (updated in place); returns the next token's logits (float64).
    step(id, state) {
      const H = this.H, s = this.scratch;
      let x = new Float64Array(this.E);
      if (id !== 1) for (let j = 0; j < this.E; j++) x[j] = this.embedding[id * this.E + j]; // the start id reads zeros
      for (let k = 0; k < this.layers.length; k++) {
        const L = this.layers[k];
        const h = state.h[k];
        if (this.config.cell === "lstm") {
          const c = state.c[k];
          s.input.set(x, 0);
          s.input.set(h, L.inputs);
          matvec(L.w, 4 * H, L.inputs + H, s.input, s.gates, L.bias);
          const g = s.gates;
          for (let j = 0; j < H; j++) {
            const i = sigmoid(g[j]), f = sigmoid(g[H + j]), cand = Math.tanh(g[2 * H + j]), o = sigmoid(g[3 * H + j]);
            c[j] = f * c[j] + i * cand;
            h[j] = o * Math.tanh(c[j]);
          }
          x = Float64Array.from(h);
        } else if (this.config.cell === "gru") {
          matvec(L.wih, 3 * H, L.inputs, x, s.gates, L.bih);
          matvec(L.whh, 3 * H, H, h, s.gates2, L.bhh);
          const a = s.gates, b = s.gates2;
          for (let j = 0; j < H; j++) {
            const r = sigmoid(a[j] + b[j]), z = sigmoid(a[H + j] + b[H + j]);
            const n = Math.tanh(a[2 * H + j] + r * b[2 * H + j]);
            h[j] = n + z * (h[j] - n);
          }
          x = Float64Array.from(h);
        } else {
          matvec(L.wih, 4 * H, L.inputs, x, s.gates, L.bias);
          matvec(L.whh, 3 * H, H, h, s.gates2, null); // reads the OLD state
          const a = s.gates, u = s.gates2;
          for (let j = 0; j < H; j++) {
            const i = sigmoid(a[j] + u[j]), f = sigmoid(a[H + j] + u[H + j]), cand = Math.tanh(a[2 * H + j] + u[2 * H + j]);
            h[j] = f * h[j] + i * cand;
          }
          matvec(L.who, H, H, h, s.out, null); // the output gate reads the NEW state
          const y = new Float64Array(H);
          for (let j = 0; j < H; j++) y[j] = sigmoid(a[3 * H + j] + s.out[j]) * Math.tanh(h[j]);
          x = y;
        }
      }
      if (this.projection) {
        matvec(this.projection, this.D, H, x, s.z, null);
        x = s.z;
      }
      const logits = new Float64Array(this.V);
      matvec(this.head, this.V, this.D, x, logits, this.headBias);
      return logits;
    }
  }

  // -- choosing tokens -------------------------------------------------------------------------

  // xoshiro128** seeded through splitmix32 from the seed's two 32-bit halves: small, fast, reproducible.
  function generator(seed) {
    let low = seed % 4294967296 >>> 0, high = Math.floor(seed / 4294967296) >>> 0;
    const splitmix = () => {
      low = (low + 0x9e3779b9) | 0;
      let z = low ^ Math.imul(high, 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 16), 0x21f0d9f5);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      high = (high + 0x632be5ab) | 0;
      return (z ^ (z >>> 15)) >>> 0;
    };
    let a = splitmix(), b = splitmix(), c = splitmix(), d = splitmix();
    const next = () => {
      const result = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)), 9) >>> 0;
      const t = b << 9;
      c ^= a; d ^= b; b ^= c; a ^= d; c ^= t;
      d = (d << 11) | (d >>> 21);
      return result;
    };
    return () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992; // [0, 1), 53 bits
  }

  // One token: greedy at temperature 0, else temperature, top-k and top-p as lstmgen applies them,
  // then one uniform number inverts the cumulative distribution of the candidates.
  function choose(logits, banned, options, uniform) {
    for (const id of banned) logits[id] = -Infinity;
    if (options.temperature === 0) {
      let best = 0;
      for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
      return best;
    }
    let ids = Array.from(logits.keys());
    let values = ids.map((i) => logits[i] / options.temperature);
    const sorted = () => {
      const order = ids.map((_, i) => i).sort((p, q) => values[q] - values[p] || ids[p] - ids[q]);
      ids = order.map((i) => ids[i]);
      values = order.map((i) => values[i]);
    };
    if (options.topK > 0 && options.topK < ids.length) {
      sorted();
      ids = ids.slice(0, options.topK);
      values = values.slice(0, options.topK);
    }
    if (options.topP < 1) {
      if (ids.length === logits.length) sorted();
      const top = Math.max(...values);
      const total = values.reduce((sum, v) => sum + Math.exp(v - top), 0);
      let cumulative = 0;
      const kept = [];
      for (let i = 0; i < ids.length; i++) {
        const p = Math.exp(values[i] - top) / total;
        if (cumulative < options.topP) kept.push(i);
        cumulative += p;
      }
      ids = kept.map((i) => ids[i]);
      values = kept.map((i) => values[i]);
    }
    const top = Math.max(...values);
    const weights = values.map((v) => Math.exp(v - top));
    const total = weights.reduce((a, b) => a + b, 0);
    const target = uniform() * total;
    let cumulative = 0;
    for (let i = 0; i < ids.length; i++) {
      cumulative += weights[i];
      if (cumulative > target && weights[i] > 0) return ids[i];
    }
    for (let i = ids.length - 1; i >= 0; i--) if (weights[i] > 0) return ids[i];
    return ids[0];
  }

  // -- poems ----------------------------------------------------------------------------------------

  // Chinese poems of a fixed shape, as `lstmgen sample --form/--acrostic` writes them (lstmgen/poetry.py): a
  // title line, then verses of Han characters, "，" after odd verses and "。" and a line break after even ones
  // (and after the last). Every token is checked character by character against the shape before it may be
  // drawn, and end-of-text is allowed exactly when the poem is complete. (lstmgen's --rhyme and --tones, and
  // its backtracking when the model leaves the shape almost no probability, are not in the page.)
  const FORMS = { "五言绝句": [4, 5], "七言绝句": [4, 7], "五言律诗": [8, 5], "七言律诗": [8, 7] };
  const TITLE_MAX = 24;
  const TITLE = 0, VERSE = 1, BREAK = 2, END = 3;
  const HAN = [[0x3400, 0x4dbf], [0x4e00, 0x9fff], [0xf900, 0xfaff], [0x20000, 0x3134f]];
  const isHan = (ch) => {
    if (Array.from(ch).length !== 1) return false;
    const point = ch.codePointAt(0);
    return HAN.some(([low, high]) => point >= low && point <= high);
  };

  class ChinesePoem {
    constructor(verses, length, acrostic) {
      this.verses = verses;
      this.length = length; // 0: the first verse decides, 5 or 7
      this.acrostic = Array.from(acrostic);
    }

    start() {
      return { phase: TITLE, verse: 0, pos: 0, length: this.length, space: false };
    }

    mark(verse) {
      return verse % 2 === 1 || verse === this.verses - 1 ? "。" : "，";
    }

    // The state after `ch`, or null when `ch` breaks the shape.
    feed(s, ch) {
      if (s.phase === TITLE) {
        if (ch === "\n") return s.pos === 0 || s.space ? null : { ...s, phase: VERSE, pos: 0, space: false };
        if (ch === " ") return s.pos === 0 || s.space || s.pos + 1 >= TITLE_MAX ? null : { ...s, pos: s.pos + 1, space: true };
        return isHan(ch) && s.pos < TITLE_MAX ? { ...s, pos: s.pos + 1, space: false } : null;
      }
      if (s.phase === BREAK) {
        if (ch !== "\n") return null;
        return s.verse === this.verses - 1 ? { ...s, phase: END, pos: 0 } : { ...s, phase: VERSE, verse: s.verse + 1, pos: 0 };
      }
      if (s.phase !== VERSE) return null;
      const atEnd = s.pos === (s.length || 7);
      const mayEnd = atEnd || (!s.length && s.pos === 5);
      if (ch === "，" || ch === "。") {
        if (!mayEnd || ch !== this.mark(s.verse)) return null;
        const length = s.length || s.pos;
        return ch === "，" ? { ...s, verse: s.verse + 1, pos: 0, length } : { ...s, phase: BREAK, length };
      }
      if (atEnd || !isHan(ch)) return null;
      if (s.pos === 0 && s.verse < this.acrostic.length && ch !== this.acrostic[s.verse]) return null;
      return { ...s, pos: s.pos + 1, length: s.length || (s.pos === 5 ? 7 : 0) };
    }

    feedText(s, text) {
      for (const ch of text) {
        s = this.feed(s, ch);
        if (s === null) return null;
      }
      return s;
    }

    done(s) {
      return s.phase === END;
    }

    // The most tokens a poem can still take (a bound for the generation loop).
    bound() {
      return TITLE_MAX + 2 + this.verses * ((this.length || 7) + 2) + 2;
    }
  }

  // Which tokens may come next in state `s`: masks cached by state (a poem revisits the same few).
  class PoemMask {
    constructor(machine, tokenizer, eos) {
      this.machine = machine;
      this.eos = eos;
      this.cache = new Map();
      this.texts = tokenizer.pieces.map((piece, id) => {
        const type = tokenizer.types[id];
        return type === NORMAL || type === USER_DEFINED ? piece.split(META).join(" ") : null; // byte pieces never
      });
    }

    allowed(s) {
      const key = JSON.stringify(s);
      let mask = this.cache.get(key);
      if (mask === undefined) {
        mask = this.texts.map((text) => text !== null && text !== "" && this.machine.feedText(s, text) !== null);
        mask[this.eos] = this.machine.done(s);
        this.cache.set(key, mask);
      }
      return mask;
    }
  }

  function poemMachine(spec, options, tokenizer) {
    const form = options.form || "";
    const acrostic = Array.from((options.acrostic || "").replace(/\s+/g, ""));
    if (!form && !acrostic.length) return null;
    if (!spec.poems) throw new Error("poem forms are for Chinese models");
    if (form && !(form in FORMS)) throw new Error(`unknown form ${form}; the forms are ${Object.keys(FORMS).join(", ")}`);
    const [verses, length] = form ? FORMS[form] : [acrostic.length, 0];
    if (acrostic.length > verses) throw new Error(`the acrostic has ${acrostic.length} characters but a ${form} has ${verses} verses`);
    for (const ch of acrostic) {
      if (!isHan(ch)) throw new Error(`the acrostic must be Chinese characters; ${ch} is not one`);
      if (!tokenizer.pieceIds.has(ch)) throw new Error(`the acrostic's ${ch} is not in the model's vocabulary`);
    }
    return new ChinesePoem(verses, length, acrostic.join(""));
  }

  // -- generation ------------------------------------------------------------------------------

  class Poet {
    constructor(spec, tensors) {
      this.spec = spec;
      this.tokenizer = new Tokenizer(spec.tokenizer);
      this.network = new Network(spec.model, tensors);
      this.banned = spec.tokenizer.never_sample_ids;
      this.eos = spec.tokenizer.end_of_text_id;
    }

    promptIds(prompt) {
      return [...this.spec.tokenizer.start_ids, ...this.tokenizer.encodeLines(prompt)];
    }

    // Read the prompt once; then yield [token id, text piece] per generated token until a limit or end of text.
    *tokens(prompt, options) {
      const machine = poemMachine(this.spec, options, this.tokenizer);
      let shape = machine && machine.feedText(machine.start(), prompt); // the prompt is the poem's beginning
      if (machine && shape === null) throw new Error("the prompt does not fit the poem's form (a title line, then its verses)");
      const mask = machine && new PoemMask(machine, this.tokenizer, this.eos);
      const limit = machine ? Math.max(options.maxTokens, machine.bound()) : options.maxTokens;
      const state = this.network.zeroState();
      let logits = null;
      for (const id of this.promptIds(prompt)) logits = this.network.step(id, state);
      const uniform = generator(options.seed ?? 0);
      const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
      for (let n = 0, id = -1; n < limit; n++) {
        if (n) logits = this.network.step(id, state);
        if (mask) {
          const allowed = mask.allowed(shape);
          for (let i = 0; i < logits.length; i++) if (!allowed[i]) logits[i] = -Infinity;
        }
        id = choose(logits, this.banned, options, uniform);
        if (mask && id !== this.eos) shape = machine.feedText(shape, mask.texts[id]);
        if (id === this.eos) {
          const tail = decoder.decode();
          if (tail) yield [-1, tail];
          return "end-of-text";
        }
        yield [id, decoder.decode(this.tokenizer.tokenBytes[id], { stream: true })];
      }
      const tail = decoder.decode();
      if (tail) yield [-1, tail];
      return "length";
    }

    run(prompt, options) {
      const ids = [];
      let text = "";
      const it = this.tokens(prompt, options);
      for (;;) {
        const { value, done } = it.next();
        if (done) return { ids, text, finish: value };
        if (value[0] >= 0) ids.push(value[0]);
        text += value[1];
      }
    }

    // Logits after each of `ids` from a zero state (float64 arrays), for checks against lstmgen.
    logits(ids) {
      const state = this.network.zeroState();
      return ids.map((id) => Array.from(this.network.step(id, state)));
    }

    // Tokens per second of the generation loop (one step and one choice per token), measured here.
    benchmark(tokens, options) {
      const state = this.network.zeroState();
      let logits = this.network.step(1, state);
      const uniform = generator(options.seed ?? 1);
      const started = performance.now();
      for (let n = 0; n < tokens; n++) {
        let id = choose(logits, this.banned, options, uniform);
        if (id === this.eos) id = this.spec.tokenizer.start_ids[0]; // keep going: a fresh start
        logits = this.network.step(id, state);
      }
      const seconds = (performance.now() - started) / 1000;
      return { tokens, seconds, tokensPerSecond: tokens / seconds };
    }
  }

  // -- the page --------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  let poet = null;
  let running = null;

  function readOptions() {
    const number = (id, fallback) => {
      const v = $(id).value.trim();
      return v === "" ? fallback : Number(v);
    };
    const options = {
      temperature: number("temperature", 0.8),
      topK: number("top-k", 0),
      topP: number("top-p", 1),
      maxTokens: number("max-tokens", 300),
      seed: number("seed", NaN),
      form: $("form").value,
      acrostic: $("acrostic").value,
    };
    const problems = [];
    if (!(options.temperature >= 0 && options.temperature <= 100)) problems.push("temperature must be from 0 to 100");
    if (!(Number.isInteger(options.topK) && options.topK >= 0)) problems.push("top-k must be a whole number ≥ 0");
    if (!(options.topP > 0 && options.topP <= 1)) problems.push("top-p must be in (0, 1]");
    if (!(Number.isInteger(options.maxTokens) && options.maxTokens >= 0)) problems.push("max tokens must be a whole number ≥ 0");
    if ($("seed").value.trim() !== "" && !(Number.isSafeInteger(options.seed) && options.seed >= 0)) {
      problems.push("the seed must be a whole number from 0 to 2^53 − 1");
    }
    if (problems.length) throw new Error(problems.join("; "));
    if (Number.isNaN(options.seed)) {
      options.seed = crypto.getRandomValues(new Uint32Array(1))[0];
      $("seed").value = String(options.seed); // shown, so the sample can be had again
    }
    return options;
  }

  async function generateInPage() {
    if (running) return;
    const status = $("status");
    let options;
    try {
      options = readOptions();
    } catch (error) {
      status.textContent = error.message;
      status.className = "error";
      return;
    }
    const prompt = $("prompt").value;
    const output = $("output");
    output.textContent = "";
    const shown = document.createElement("span");
    shown.className = "prompt";
    shown.textContent = prompt;
    output.append(shown);
    const text = document.createTextNode("");
    output.append(text);
    status.className = "";
    status.textContent = "reading the prompt…";
    running = { stop: false };
    $("generate").disabled = true;
    $("stop").disabled = false;
    const started = performance.now();
    let count = 0, finish = "stopped";
    try {
      const it = poet.tokens(prompt, options);
      let sliceStart = performance.now();
      for (;;) {
        const { value, done } = it.next();
        if (done) {
          finish = value;
          break;
        }
        if (value[0] >= 0) count++;
        text.appendData(value[1]);
        if (performance.now() - sliceStart > 30) {
          // Let the page draw what is there: streamed output, about 30 frames a second.
          status.textContent = `${count} tokens…`;
          await new Promise((resolve) => setTimeout(resolve, 0));
          sliceStart = performance.now();
          if (running.stop) break;
        }
      }
    } catch (error) {
      status.className = "error";
      status.textContent = error.message;
      finish = "error";
    }
    const seconds = (performance.now() - started) / 1000;
    if (finish !== "error") {
      const why = { "end-of-text": "the model ended the text", length: "max tokens reached", stopped: "stopped" }[finish];
      status.textContent = `${count} tokens in ${seconds.toFixed(1)} s (${(count / seconds).toFixed(0)} tokens/s); ${why}; seed ${options.seed}`;
    }
    output.dataset.finish = finish;
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }

  function setUp() {
    $("generate").addEventListener("click", generateInPage);
    $("stop").addEventListener("click", () => running && (running.stop = true));
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generateInPage();
    });
    const params = new URLSearchParams(location.hash.slice(1));
    for (const [key, id] of [["prompt", "prompt"], ["temp", "temperature"], ["top-k", "top-k"], ["top-p", "top-p"], ["seed", "seed"], ["max-tokens", "max-tokens"], ["form", "form"], ["acrostic", "acrostic"]]) {
      if (params.has(key)) $(id).value = params.get(key);
    }
    if (SPEC.poems) $("poem").hidden = $("poem-acrostic").hidden = false;
  }

  const ready = (async () => {
    setUp();
    const started = performance.now();
    const tensors = await loadWeights();
    poet = new Poet(SPEC, tensors);
    const seconds = (performance.now() - started) / 1000;
    $("status").textContent = `ready (weights read in ${seconds.toFixed(1)} s)`;
    $("generate").disabled = false;
    document.body.dataset.ready = "1";
    return seconds;
  })();
  ready.catch((error) => {
    $("status").className = "error";
    $("status").textContent = `cannot load the model: ${error.message}`;
  });

  window.poet = {
    ready,
    spec: SPEC,
    encode: (text) => poet.tokenizer.encode(text),
    promptIds: (text) => poet.promptIds(text),
    decode: (ids) => poet.tokenizer.decode(ids),
    generate: (prompt, options) => poet.run(prompt, { temperature: 1, topK: 0, topP: 1, maxTokens: 200, seed: 0, form: "", acrostic: "", ...options }),
    greedy: (prompt, maxTokens) => poet.run(prompt, { temperature: 0, topK: 0, topP: 1, maxTokens, seed: 0 }),
    logits: (ids) => poet.logits(ids),
    benchmark: (tokens, options) => poet.benchmark(tokens, { temperature: 1, topK: 0, topP: 1, ...options }),
    clickGenerate: generateInPage,
  };
})();
